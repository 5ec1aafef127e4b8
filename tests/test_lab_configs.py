"""Every models.config the lab writes is accepted with exactly the flags docker-compose.yaml gives TF Serving.

The real image runs its entrypoint's flags, then the compose file's `command:`; here the same command
line runs the local server, with the container's mounts (/models, /configs) mapped to temporary
directories. Configs after the first arrive as the lab sends them: written to the polled file, and
(so the test need not wait for the poll) through HandleReloadConfigRequest.
"""

import shutil

import pytest
import yaml
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from conftest import PROJECT_ROOT, TFSERVING_TESTDATA
from server_harness import copy_fixture, label_version, running_server
from test_server_fixtures import CONFIG as FIXTURES_CONFIG
from utils.deploy import models_config, monitoring_config, write_config
from utils.server import wait_until_available

# The Dockerfile's entrypoint: tensorflow_model_server --port=8500 --rest_api_port=8501
# --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@" (ports: the harness's).
ENTRYPOINT_FLAGS = ["--model_name=model", "--model_base_path=/models/model"]
OLD, NEW = 123, 124  # the versions of saved_model_half_plus_two_2_versions

# (versions, labels) of each config, in the order the lab sends them.
LAB_CONFIGS = {
    "notebook_04": [([OLD, NEW], {"stable": OLD, "canary": NEW})],
    "notebook_04_two_step": [([OLD, NEW], {}), ([OLD, NEW], {"stable": OLD, "canary": NEW})],
    "notebook_06_start_server": [([OLD, NEW], {"stable": OLD})],
    "notebook_06_canary": [([OLD], {"stable": OLD}), ([OLD, NEW], {"stable": OLD, "canary": NEW}),
                           ([OLD, NEW], {"stable": NEW, "canary": OLD})],
    "labtools_bench": [([OLD], {})],
    "test_server_errors": [([OLD, NEW], {"stable": OLD})],
}


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


@pytest.mark.parametrize("steps", LAB_CONFIGS.values(), ids=LAB_CONFIGS.keys())
def test_lab_config_is_accepted_with_the_compose_flags(tmp_path, lab_dirs, steps):
    models, configs = lab_dirs
    base = models / "hp"
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions", base)
    config_file = configs / "models.config"
    (versions, labels), *later = steps
    write_config(models_config("hp", base, versions, labels), config_file)
    flags = compose_serving_flags({"/models": models, "/configs": configs})
    with running_server(tmp_path, flags, wait_for=[("hp", versions)]) as (_, rest, channel):
        assert {label: label_version(rest, "hp", label) for label in labels} == labels
        for versions, labels in later:
            config = models_config("hp", base, versions, labels)
            write_config(config, config_file)
            assert reload(channel, config) == 0
            wait_until_available(rest, "hp", versions, timeout=30)
            assert {label: label_version(rest, "hp", label) for label in labels} == labels


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
