"""The three backends (docker, binary, local) and `auto`'s choice, without starting any process."""

import io
import shlex
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from labtools import backends
from model_server.cli import FLAGS, UNSUPPORTED_FLAGS
from utils.deploy import models_config, write_config
from utils.errors import LabError
from utils.runtime import model_server_process
from utils.runtime.model_server_process import (
    DEFAULT_TFSERVING_IMAGE,
    LAB_ONLY_FLAGS,
    DockerServer,
    LocalModelServer,
    TFServingBinary,
    choose_backend,
    flag_name,
    tfserving_flags,
)
from utils.runtime.processes import Program

# TF Serving's image runs `tensorflow_model_server` with these before the flags `docker run` gives it.
IMAGE_ENTRYPOINT_FLAGS = ["--port=8500", "--rest_api_port=8501", "--model_name=model",
                          "--model_base_path=/models/model"]


@pytest.fixture(autouse=True)
def no_lab_environment(monkeypatch):
    for name in ("LAB_BACKEND", "LAB_TFSERVING_BINARY", "LAB_TFSERVING_IMAGE", "LAB_DOCKER_RUN_OPTIONS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def lab_configs(tmp_path):
    """A models directory and notebook 04's two configs: (models.local.config, models_dir)."""
    models_dir, configs_dir = tmp_path / "models", tmp_path / "configs"
    (models_dir / "hp" / "123").mkdir(parents=True)
    write_config(models_config("hp", models_dir / "hp", [123]), configs_dir / "models.local.config")
    write_config(models_config("hp", "/models/hp", [123]), configs_dir / "models.config")
    return configs_dir / "models.local.config", models_dir


def forbid_probing(monkeypatch):
    def probe():
        raise AssertionError("auto probed Docker although LAB_BACKEND is set")

    monkeypatch.setattr(model_server_process, "docker_engine_answers", probe)


def test_unknown_backend_is_one_sentence():
    with pytest.raises(LabError) as error:
        choose_backend("kubernetes")
    assert str(error.value) == "Unknown backend 'kubernetes': choose 'auto', 'docker', 'binary' or 'local'."


def test_lab_backend_makes_auto_choose_without_probing(monkeypatch, capsys):
    forbid_probing(monkeypatch)
    monkeypatch.setenv("LAB_BACKEND", "local")
    assert choose_backend("auto") == "local"
    assert capsys.readouterr().out == ("Backend 'auto': LAB_BACKEND is set, using 'local' (the lab's model_server "
                                       "stand-in).\n")


def test_an_unknown_lab_backend_is_one_sentence(monkeypatch):
    forbid_probing(monkeypatch)
    monkeypatch.setenv("LAB_BACKEND", "auto")
    with pytest.raises(LabError) as error:
        choose_backend("auto")
    assert str(error.value) == "LAB_BACKEND='auto' is not a backend: set it to 'docker', 'binary' or 'local'."


def test_an_explicit_backend_is_kept_without_probing(monkeypatch, capsys):
    forbid_probing(monkeypatch)
    assert [choose_backend(name) for name in ("docker", "binary", "local")] == ["docker", "binary", "local"]
    assert capsys.readouterr().out == ""


def test_auto_prefers_docker(monkeypatch, capsys):
    monkeypatch.setattr(model_server_process, "docker_engine_answers", lambda: True)
    monkeypatch.setenv("LAB_TFSERVING_IMAGE", "example/serving:1")
    assert choose_backend("auto") == "docker"
    assert capsys.readouterr().out == ("Backend 'auto': a Docker engine answers, using 'docker' (TF Serving image "
                                       "example/serving:1).\n")


def test_auto_takes_the_binary_without_docker(monkeypatch, capsys, tmp_path):
    binary = tmp_path / "tensorflow_model_server"
    binary.write_text("")
    monkeypatch.setattr(model_server_process, "docker_engine_answers", lambda: False)
    monkeypatch.setenv("LAB_TFSERVING_BINARY", str(binary))
    assert choose_backend("auto") == "binary"
    assert capsys.readouterr().out == ("Backend 'auto': no Docker engine, tensorflow_model_server found, using "
                                       "'binary' (TF Serving's binary).\n")


def test_auto_falls_back_to_the_stand_in(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(model_server_process, "docker_engine_answers", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(model_server_process, "TFSERVING_BINARY",
                        Program("tensorflow_model_server", "LAB_TFSERVING_BINARY", "absent/tensorflow_model_server"))
    assert choose_backend("auto") == "local"
    assert capsys.readouterr().out == ("Backend 'auto': no Docker engine, no tensorflow_model_server, using 'local' "
                                       "(the lab's model_server stand-in).\n")


def test_the_binary_backend_without_a_binary_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_TFSERVING_BINARY", str(tmp_path / "absent"))
    with pytest.raises(LabError) as error:
        TFServingBinary(tfserving_flags("models.config", 8500, 8501)).start()
    assert str(error.value) == ("Backend 'binary' needs TF Serving's tensorflow_model_server, which is not on PATH: "
                                "install it (README: Backends), or set LAB_TFSERVING_BINARY to it, or use backend "
                                "'local'.")


def test_each_server_says_which_server_it_is(lab_configs, monkeypatch):
    local_config, _ = lab_configs
    flags = tfserving_flags(local_config, 8500, 8501)
    assert LocalModelServer(flags).description == "the lab's model_server stand-in (Python)"
    assert TFServingBinary(flags, binary="/usr/bin/tensorflow_model_server").description == (
        "TF Serving binary /usr/bin/tensorflow_model_server")
    assert DockerServer(local_config).description == f"TF Serving image {DEFAULT_TFSERVING_IMAGE} in Docker"


def test_every_flag_a_backend_gets_is_a_tf_serving_flag(lab_configs):
    local_config, _ = lab_configs
    given = [*tfserving_flags(local_config, 8500, 8501), *DockerServer(local_config).flags, *IMAGE_ENTRYPOINT_FLAGS]
    unknown = {flag_name(flag) for flag in given} - set(FLAGS) - UNSUPPORTED_FLAGS
    assert unknown == set()


def test_no_lab_only_flag_is_given_to_a_backend(lab_configs):
    local_config, _ = lab_configs
    given = [*tfserving_flags(local_config, 8500, 8501), *DockerServer(local_config).flags]
    assert {flag_name(flag) for flag in given} & set(LAB_ONLY_FLAGS) == set()


def test_lab_only_flags_are_the_stand_ins_own():
    assert set(LAB_ONLY_FLAGS) <= set(FLAGS)


@pytest.mark.parametrize("make_server", [
    lambda config, flag: TFServingBinary(tfserving_flags(config, 8500, 8501, [flag]), binary="/bin/true"),
    lambda config, flag: DockerServer(config, extra_flags=[flag]),
], ids=["binary", "docker"])
def test_a_lab_only_flag_never_reaches_tf_serving(lab_configs, make_server):
    with pytest.raises(LabError, match=r"^--bind_address is the lab's own flag, which .* does not have: leave it out "):
        make_server(lab_configs[0], "--bind_address=0.0.0.0")


def test_docker_run_publishes_the_ports_asked_for_and_mounts_read_only(lab_configs):
    local_config, models_dir = lab_configs
    command = DockerServer(local_config, grpc_port=9100, rest_port=9101).command
    assert command[:5] == ["docker", "run", "-d", "--name", "lab-tfserving-9101"]
    assert shlex.join(command[5:13]) == shlex.join([
        "-p", "9101:8501", "-p", "9100:8500",
        "-v", f"{models_dir}:/models:ro", "-v", f"{local_config.parent}:/configs:ro"])
    assert command[13:] == [DEFAULT_TFSERVING_IMAGE, *tfserving_flags("/configs/models.config")]


def test_docker_run_takes_the_image_and_options_from_the_environment(lab_configs, monkeypatch):
    monkeypatch.setenv("LAB_TFSERVING_IMAGE", "lab/tfserving-standin:1")
    monkeypatch.setenv("LAB_DOCKER_RUN_OPTIONS", "--gpus all -v '/opt/my dir:/opt/my dir:ro'")
    command = DockerServer(lab_configs[0]).command
    image_at = command.index("lab/tfserving-standin:1")
    assert command[image_at - 4:image_at] == ["--gpus", "all", "-v", "/opt/my dir:/opt/my dir:ro"]


def test_extra_flags_reach_the_container_with_its_paths(lab_configs):
    local_config, models_dir = lab_configs
    monitoring = local_config.parent / "monitoring.config"
    server = DockerServer(local_config, extra_flags=[f"--monitoring_config_file={monitoring}", "--enable_batching"])
    assert server.flags[-2:] == ["--monitoring_config_file=/configs/monitoring.config", "--enable_batching"]


def test_a_config_serving_from_two_directories_cannot_be_mounted(tmp_path):
    config = models_config("a", tmp_path / "one" / "a", [1])
    config.model_config_list.config.append(models_config("b", tmp_path / "two" / "b", [1]).model_config_list.config[0])
    write_config(config, tmp_path / "models.local.config")
    with pytest.raises(LabError, match="serves models from 2 directories: the docker backend mounts one at /models"):
        DockerServer(tmp_path / "models.local.config")


def test_docker_compose_serves_with_the_builders_flags():
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())["services"]["serving"]
    assert compose["image"] == DEFAULT_TFSERVING_IMAGE
    assert compose["command"] == tfserving_flags(
        "/configs/models.config", extra_flags=["--monitoring_config_file=/configs/monitoring.config"])
    assert sorted(Path(volume.split(":")[1]).as_posix() for volume in compose["volumes"]) == ["/configs", "/models"]


@pytest.mark.parametrize("target, pinned", [("test", "LAB_BACKEND=local "), ("test-fast", "LAB_BACKEND=local "),
                                            ("notebooks", "--backend local")])
def test_make_test_and_make_notebooks_pin_the_stand_in(target, pinned):
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    assert pinned in recipe


def test_the_stand_in_image_runs_tf_servings_entrypoint_on_the_stand_in():
    entrypoint = backends.ENTRYPOINT.format(python="/venv/bin/python")
    rootfs = tarfile.open(fileobj=io.BytesIO(backends.standin_rootfs(entrypoint)))
    links = {member.name: member.linkname for member in rootfs.getmembers() if member.issym()}
    assert links == {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
    script = rootfs.extractfile("tf_serving_entrypoint.sh").read().decode()
    assert shlex.split(script.split("exec ", 1)[1].replace("\\\n", " ")) == [
        "/venv/bin/python", "-m", "model_server", "--bind_address=0.0.0.0", *IMAGE_ENTRYPOINT_FLAGS[:2],
        "--model_name=${MODEL_NAME}", "--model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME}", "$@"]
    assert rootfs.getmember("tf_serving_entrypoint.sh").mode == 0o755


def test_the_stand_in_container_sees_python_and_the_repository_read_only():
    mounts = backends.bind_mounts()
    assert mounts[::2] == ["-v"] * (len(mounts) // 2)
    assert f"{PROJECT_ROOT}:{PROJECT_ROOT}:ro" in mounts[1::2]
    assert "/usr:/usr:ro" in mounts[1::2]


def test_make_test_backends_without_dockerd_or_root_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    monkeypatch.setattr(backends.os, "geteuid", lambda: 1000)
    assert not backends.step("docker: dockerd installed", backends.install_docker)
    assert capsys.readouterr().out.endswith(
        "FAILED: dockerd is missing: install Docker Engine (Debian or Ubuntu, as root: `apt-get install docker.io`), "
        "then run `make test-backends` again.\n")
