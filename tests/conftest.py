"""Shared fixtures (the project's offline models exported once per test session, TF Serving's test models
built into build/testdata/), optional cross-checks against ../shared, and the test tiers."""

import functools
import os
import re
from pathlib import Path

import pytest

from labtools.testdata import TESTDATA_DIR, ensure_testdata

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# TF Serving's test models and configs, built by the repository (`python -m labtools testdata`) once per
# checkout; the session fixture below builds them before the first test.
TFSERVING_TESTDATA = TESTDATA_DIR
# Optional cross-checks only: data no one on this project wrote, present on the project's own machines
# (../shared beside the checkout). Tests that read it skip with a reason when it is absent.
SHARED_DIR = PROJECT_ROOT.parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference"
SHARED_TFSERVING_TESTDATA = SHARED_DIR / "fixtures" / "tfserving-testdata"


def shared_reference(path):
    """`path` under ../shared, or a skip naming it: a cross-check with data from outside the repository."""
    if not path.exists():
        pytest.skip(f"optional cross-check: {path} is absent (it exists only beside the project's own checkouts)")
    return path


# Tiers (pyproject.toml registers them): `make test-fast` runs unit and server. A module is in the server
# tier if it starts model servers through server_harness (found in its source) or is listed here.
SERVER_MODULES = {  # start model servers, or run the lab's commands and other programs as processes
    "test_grpc_surface", "test_lab_configs", "test_processes", "test_production", "test_rest_tf_serving_cases",
    "test_scale_out", "test_server_errors", "test_server_fixtures", "test_server_lifecycle", "test_server_metrics",
    "test_bundle", "test_lab_commands", "test_bench", "test_backend_processes",
}
BROWSER_MODULES = {"test_browser"}
STARTS_A_SERVER = re.compile(r"\b(running_server|run_server_to_exit)\(")  # server_harness's two ways


@functools.cache
def module_tier(path):
    if path.suffix == ".ipynb":
        return "notebook"
    if path.stem in BROWSER_MODULES:
        return "browser"
    if path.stem in SERVER_MODULES or STARTS_A_SERVER.search(path.read_text(encoding="utf-8")):
        return "server"
    return "unit"


def tier(item):
    """unit, server, notebook or browser: by the module an item comes from (nbval items are notebooks)."""
    return module_tier(Path(str(item.fspath)))


# `make test` runs two pytest-xdist workers (`-n 2`): nbval's notebooks in order on one, the browser's copies
# of them (ports and build directories of their own, see test_browser) on the other, and every other module
# whole on whichever worker is free. The two notebook groups are the longest: they go first, so neither
# waits behind the short ones.
LONGEST_GROUPS = ["browser", "notebook"]
# Then the modules that run longest (over 20 s each in one `make test`, 2026-12-06), longest first: in file
# order, test_server_lifecycle (about 120 s) started near the end and left the other worker idle for about
# 50 s of 760.
LONG_MODULES = ["test_server_lifecycle", "test_production", "test_backend_processes", "test_lab_configs",
                "test_scale_out", "test_processes", "test_server_hardening"]


def group_of(path):
    """The browser and notebook tiers are one group each; every other module is a group of its own."""
    name = module_tier(Path(path))
    return name if name in LONGEST_GROUPS else str(path)


def pytest_collection_modifyitems(items):
    for item in items:
        name = tier(item)
        if not any(item.iter_markers(name=name)):
            item.add_marker(name)
    rank = {group: index for index, group in enumerate(LONGEST_GROUPS)}
    rank.update({module: len(LONGEST_GROUPS) + index for index, module in enumerate(LONG_MODULES)})
    # A stable sort: every group keeps its own order.
    items.sort(key=lambda item: rank.get(group_of(item.fspath), rank.get(Path(str(item.fspath)).stem, len(rank))))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling (a scope runs whole, in order, on one worker), scoped by `group_of`
    and in collection order. (Its `xdist_group` mark does not group under pytest 9, whose nodes keep their
    id in `_id`, not the `_nodeid` pytest-xdist 3.8 rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(PROJECT_ROOT / nodeid.split("::", 1)[0])

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


def pytest_sessionstart(session):
    """Under pytest-xdist, the files both notebook groups read are made once, before the workers start:
    TF Serving's test models and the offline catalog's converted models (TensorFlow's log: build/logs/)."""
    if session.config.getoption("numprocesses", None) and not hasattr(session.config, "workerinput"):
        from labtools.notebooks import LOGS_DIR, prepare_catalog
        from utils.runtime.processes import stderr_to

        prepare_catalog("offline")
        with stderr_to(LOGS_DIR / "testdata.log"):
            ensure_testdata()


@pytest.fixture(scope="session", autouse=True)
def tfserving_testdata():
    """build/testdata/, built if its stamp is stale (a few seconds, once per checkout)."""
    return ensure_testdata()


@pytest.fixture
def own_run_dir(monkeypatch, tmp_path):
    """The lab's process records (build/run/) in a directory of this test's own, for it and the processes it
    starts: its `make stop` stops only what it started, never a server a test running beside it uses."""
    from utils.runtime import model_server_process, processes

    run_dir = tmp_path / "run"
    monkeypatch.setenv("LAB_RUN_DIR", str(run_dir))
    monkeypatch.setattr(processes, "RUN_DIR", run_dir)
    monkeypatch.setattr(model_server_process, "DOCKER_RUN_DIR", run_dir / "docker")
    return run_dir


@pytest.fixture(scope="session")
def offline_models():
    from utils.catalog import catalog_models

    return catalog_models("offline")


@pytest.fixture(scope="session")
def labels():
    from utils.labels import load_labels

    return load_labels()


@pytest.fixture(scope="session")
def serving_modules(offline_models, labels):
    """{version: ServingModule} for the offline catalog."""
    from utils.catalog import load_model
    from utils.serving import ServingModule

    return {m.version: ServingModule(load_model(m), labels) for m in offline_models}


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory, offline_models, serving_modules):
    """A models directory holding efficientnet_lite/{0,1}, exported like notebook 03."""
    from utils.serving import export_servable

    models_dir = tmp_path_factory.mktemp("models")
    for m in offline_models:
        export_servable(serving_modules[m.version], models_dir, m.model_name, m.version)
    return models_dir
