"""Every models.config the lab writes is accepted with exactly the flags docker-compose.yaml gives TF Serving.

The real image runs its entrypoint's flags, then the compose file's `command:`; here the same command
line runs the local server, with the container's mounts (/models, /configs) mapped to temporary
directories. Configs after the first arrive as the lab sends them: written to the polled file, and
(so the test need not wait for the poll) through HandleReloadConfigRequest.
"""

import ast
import shutil
import types

import grpc
import nbformat
import pytest
import yaml
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from conftest import PROJECT_ROOT, TFSERVING_TESTDATA
from server_harness import copy_fixture, label_version, running_server
from test_server_fixtures import CONFIG as FIXTURES_CONFIG
from utils.deploy import models_config, monitoring_config, write_config
from utils.runtime.model_server_process import wait_until_available

# The Dockerfile's entrypoint: tensorflow_model_server --port=8500 --rest_api_port=8501
# --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@" (ports: the harness's).
ENTRYPOINT_FLAGS = ["--model_name=model", "--model_base_path=/models/model"]
OLD, NEW = 123, 124  # the versions of saved_model_half_plus_two_2_versions

# The configs the lab writes are read from its code (notebooks and labtools), below; this one is the tests' own.
TEST_CONFIGS = {
    "test_server_errors": [([OLD, NEW], {"stable": OLD})],
}
# What the lab's names mean here: every exported version, and the objects labtools passes around.
# make soak rolls `stable` in a loop (`for served, stable in ...`): its middle step stands for the loop.
LAB_NAMES = {"versions": [OLD, NEW], "version": OLD, "bench": types.SimpleNamespace(version=OLD),
             "served": [OLD, NEW], "stable": NEW}
SAFE_BUILTINS = {"max": max, "min": min, "len": len, "sorted": sorted, "list": list, "dict": dict}


def lab_sources():
    """{name: [code, ...]} for every notebook and labtools module that builds a models.config."""
    sources = {}
    for path in sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        sources[f"notebook_{path.stem}"] = ["\n".join(line for line in cell.splitlines()
                                                       if not line.lstrip().startswith(("%", "!")))
                                             for cell in cells]
    for path in sorted((PROJECT_ROOT / "labtools").glob("*.py")):
        sources[f"labtools_{path.stem}"] = [path.read_text()]
    return {name: code for name, code in sources.items() if any("models_config(" in c for c in code)}


def config_writers(tree):
    """{function: (versions parameter index, labels parameter index)} of the functions in `tree` that pass
    two of their own parameters on to models_config as its versions and labels (notebook 06's
    write_served_config); their calls are read as models_config calls, their inner call is skipped."""
    writers, inner = {}, set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        parameters = [a.arg for a in function.args.args]
        for call in ast.walk(function):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "models_config"
                    and len(call.args) == 4 and all(isinstance(a, ast.Name) and a.id in parameters
                                                    for a in call.args[2:])):
                writers[function.name] = (parameters.index(call.args[2].id), parameters.index(call.args[3].id))
                inner.add(call)
    return writers, inner


def models_configs_in(code):
    """[(versions, labels)] of each `models_config(name, base_path, versions[, labels])` call, in code order.

    Each argument is evaluated with the values the code assigned before it (simple assignments the
    evaluation can follow), starting from LAB_NAMES; a call it cannot evaluate fails, naming its line.
    """
    names, configs, writers = dict(LAB_NAMES), [], {}

    def evaluate(node):
        return eval(compile(ast.Expression(node), "<lab code>", "eval"), {"__builtins__": SAFE_BUILTINS}, names)

    for source in code:
        tree = ast.parse(source)
        found, inner = config_writers(tree)
        writers.update(found)
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.Call)) and n not in inner]
        for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
            if isinstance(node, ast.Assign):
                try:
                    value = evaluate(node.value)
                except Exception:  # an assignment this evaluation cannot follow; calls that need it fail below
                    continue
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        names[target.id] = value
                    elif isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts):
                        names.update(zip((e.id for e in target.elts), value))
            elif isinstance(node.func, ast.Name) and node.func.id in writers:
                versions_at, labels_at = writers[node.func.id]
                configs.append((list(evaluate(node.args[versions_at])), dict(evaluate(node.args[labels_at]))))
            elif isinstance(node.func, ast.Name) and node.func.id == "models_config" and len(node.args) >= 3:
                labels = node.args[3] if len(node.args) > 3 else next(
                    (k.value for k in node.keywords if k.arg == "labels"), None)
                try:
                    configs.append((list(evaluate(node.args[2])), dict(evaluate(labels)) if labels else {}))
                except Exception as error:
                    raise AssertionError(f"cannot evaluate `{ast.unparse(node)}` ({error!r}): teach LAB_NAMES "
                                         "what its names mean") from None
    return configs


LAB_CONFIGS = {name: configs for name, code in lab_sources().items() if (configs := models_configs_in(code))}


def refused_on_reload(labels, served_labels, served_versions):
    """TF Serving's rule (server_core.cc, with --allow_version_labels_for_unavailable_models): a new label may
    name a version that is not available yet; moving a label already in use to such a version is refused."""
    return any(label in served_labels and version not in served_versions for label, version in labels.items())


def compose_serving_flags(mounts):
    """The real image's flags, with each container path in `mounts` ({"/models": dir}) replaced."""
    service = yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())["services"]["serving"]
    mounted = {volume.split(":")[1] for volume in service["volumes"]}
    assert mounted == set(mounts), "the test maps every volume docker-compose.yaml mounts"
    flags = []
    for flag in ENTRYPOINT_FLAGS + service["command"]:
        for container_path, local_path in mounts.items():
            flag = flag.replace(f"={container_path}/", f"={local_path}/")
        flags.append(flag)
    return flags


@pytest.fixture
def lab_dirs(tmp_path):
    """(models dir, configs dir) standing in for the container's /models and /configs."""
    models, configs = tmp_path / "models", tmp_path / "configs"
    models.mkdir()
    write_config(monitoring_config(), configs / "monitoring.config")  # notebook 04 writes it
    return models, configs


def reload(channel, config):
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request).status.error_code


def test_compose_flags_are_the_lab_flags_for_labels_at_start_up(lab_dirs):
    flags = compose_serving_flags({"/models": lab_dirs[0], "/configs": lab_dirs[1]})
    assert "--allow_version_labels_for_unavailable_models" in flags
    assert f"--model_config_file={lab_dirs[1]}/models.config" in flags


def test_the_lab_configs_are_read_from_the_notebooks_and_bench():
    assert {"notebook_04_deploy", "notebook_06_production", "labtools_bench"} <= set(LAB_CONFIGS)
    assert all(LAB_CONFIGS.values()), LAB_CONFIGS
    # notebook 04 labels both versions at start-up; notebook 06 moves `stable` by a canary; the bench serves one
    assert LAB_CONFIGS["notebook_04_deploy"][0] == ([OLD, NEW], {"stable": OLD, "canary": NEW})
    assert ([OLD, NEW], {"stable": NEW, "canary": OLD}) in LAB_CONFIGS["notebook_06_production"]
    assert LAB_CONFIGS["labtools_bench"] == [([OLD], {})]


@pytest.mark.parametrize("steps", [*LAB_CONFIGS.values(), *TEST_CONFIGS.values()],
                         ids=[*LAB_CONFIGS, *TEST_CONFIGS])
def test_lab_config_is_accepted_with_the_compose_flags(tmp_path, lab_dirs, steps):
    """The first config at start-up, then each later one in the code's order, as a reload.

    Every label naming a served version resolves to it. A config that moves a label in use to a version
    not loaded is one the lab shows being refused (notebooks 04 and 06): its reload fails with
    FAILED_PRECONDITION and changes nothing.
    """
    models, configs = lab_dirs
    base = models / "hp"
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions", base)
    config_file = configs / "models.config"
    (versions, labels), *later = steps
    write_config(models_config("hp", base, versions, labels), config_file)
    flags = compose_serving_flags({"/models": models, "/configs": configs})

    def resolved(labels, versions):
        return {label: label_version(rest, "hp", label) for label, v in labels.items() if v in versions}

    with running_server(tmp_path, flags, wait_for=[("hp", versions)]) as (_, rest, channel):
        assert resolved(labels, versions) == {label: v for label, v in labels.items() if v in versions}
        served_versions, served_labels = versions, labels
        for versions, labels in later:
            config = models_config("hp", base, versions, labels)
            if refused_on_reload(labels, served_labels, served_versions):
                with pytest.raises(grpc.RpcError) as refused:
                    reload(channel, config)
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert resolved(served_labels, served_versions) == {
                    label: v for label, v in served_labels.items() if v in served_versions}
                continue
            write_config(config, config_file)
            assert reload(channel, config) == 0
            wait_until_available(rest, "hp", versions, timeout=30)
            assert resolved(labels, versions) == {label: v for label, v in labels.items() if v in versions}
            served_versions, served_labels = versions, labels


def test_test_server_fixtures_config_is_accepted_with_the_compose_flags(tmp_path, lab_dirs):
    models, configs = lab_dirs
    paths = {key: copy_fixture(name, models) for key, name in [
        ("tf1", "saved_model_half_plus_two_cpu"), ("tf2", "saved_model_half_plus_two_tf2_cpu"),
        ("counter", "saved_model_counter"), ("two", "saved_model_half_plus_two_2_versions")]}
    (configs / "models.config").write_text(FIXTURES_CONFIG % paths)
    flags = compose_serving_flags({"/models": models, "/configs": configs})
    with running_server(tmp_path, flags, wait_for=[("two_versions", [OLD, NEW])]) as (_, rest, _channel):
        labels = {label: label_version(rest, "two_versions", label) for label in ("stable", "canary")}
        assert labels == {"stable": OLD, "canary": NEW}
