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


def pytest_collection_modifyitems(items):
    for item in items:
        name = tier(item)
        if not any(item.iter_markers(name=name)):
            item.add_marker(name)


@pytest.fixture(scope="session", autouse=True)
def tfserving_testdata():
    """build/testdata/, built if its stamp is stale (a few seconds, once per checkout)."""
    return ensure_testdata()


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
