"""The binary and docker backends, really started: a `tensorflow_model_server` shim and a fake `docker`
(tests/fakes/) on PATH, both running the lab's model_server, so readiness, predictions and clean-up are
exercised without TF Serving or a Docker engine."""

import json
import os
import subprocess
import sys
import textwrap

import psutil
import pytest
import requests

from conftest import PROJECT_ROOT
from server_harness import copy_fixture
from utils.deploy import models_config, write_config
from utils.errors import LabError
from utils.runtime import model_server_process
from utils.runtime.model_server_process import (
    DEFAULT_TFSERVING_IMAGE,
    DockerServer,
    TFServingBinary,
    choose_backend,
    start_model_server,
    tfserving_flags,
    wait_until_available,
)
from utils.runtime.processes import free_port, lab_processes, wait_for_exit
from utils.runtime.waiting import wait_until

FAKES = PROJECT_ROOT / "tests" / "fakes"
STANDIN_IMAGE = "lab/tfserving-standin:test"
# Each test records its servers and containers in a directory of its own: its `make stop` stops only those.
pytestmark = pytest.mark.usefixtures("own_run_dir")


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """The shim and the fake docker first on PATH; returns the fake docker's state directory."""
    for name in ("LAB_BACKEND", "LAB_TFSERVING_BINARY", "LAB_TFSERVING_IMAGE", "LAB_DOCKER_RUN_OPTIONS",
                 "FAKE_DOCKER_ENGINE", "FAKE_DOCKER_RUN_ERROR", "FAKE_DOCKER_RM_ERROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}:{FAKES / 'docker'}:{os.environ['PATH']}")
    monkeypatch.setenv("LAB_STANDIN_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(tmp_path / "docker"))
    monkeypatch.setenv("FAKE_DOCKER_IMAGES", STANDIN_IMAGE)
    monkeypatch.setenv("LAB_TFSERVING_IMAGE", STANDIN_IMAGE)
    return tmp_path / "docker"


def docker_calls(state):
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def lab_configs(tmp_path):
    """TF Serving's half_plus_two and notebook 04's two configs for it; returns models.local.config."""
    models_dir, configs_dir = tmp_path / "models", tmp_path / "configs"
    copy_fixture("saved_model_half_plus_two_cpu", models_dir)
    name = "saved_model_half_plus_two_cpu"
    write_config(models_config(name, models_dir / name, [123], {"stable": 123}), configs_dir / "models.local.config")
    write_config(models_config(name, f"/models/{name}", [123], {"stable": 123}), configs_dir / "models.config")
    return configs_dir / "models.local.config"


def predict(rest_port):
    url = f"http://127.0.0.1:{rest_port}/v1/models/saved_model_half_plus_two_cpu/labels/stable:predict"
    return requests.post(url, json={"instances": [1.0, 2.0, 5.0]}, timeout=30).json()


def run_labtools_stop():
    return subprocess.run([sys.executable, "-m", "labtools", "stop"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120, env=os.environ)


def test_auto_with_lab_backend_set_never_calls_docker(fakes, monkeypatch):
    monkeypatch.setenv("LAB_BACKEND", "local")
    assert choose_backend("auto") == "local"
    assert docker_calls(fakes) == []


def test_auto_asks_the_docker_engine_first(fakes, capsys):
    assert choose_backend("auto") == "docker"
    assert docker_calls(fakes) == [["info"]]


def test_the_binary_backend_serves_and_make_stop_stops_it(fakes, monkeypatch, lab_configs, capsys):
    monkeypatch.setenv("FAKE_DOCKER_ENGINE", "down")
    grpc_port, rest_port = free_port(), free_port()
    server = start_model_server("auto", lab_configs, grpc_port=grpc_port, rest_port=rest_port)
    try:
        assert capsys.readouterr().out.startswith("Backend 'auto': no Docker engine, tensorflow_model_server found, "
                                                  "using 'binary'")
        assert isinstance(server, TFServingBinary)
        assert server.description == f"TF Serving binary {FAKES / 'bin' / 'tensorflow_model_server'}"
        wait_until_available(f"http://127.0.0.1:{rest_port}", "saved_model_half_plus_two_cpu", [123], timeout=90,
                             process=server.process)
        assert predict(rest_port) == {"predictions": [2.5, 3.0, 4.5]}
        received = psutil.Process(server.process.pid).cmdline()
        assert received[-len(server.flags):] == tfserving_flags(lab_configs, grpc_port, rest_port)
        assert server.process.pid in {record.pid for record in lab_processes()}
        stopped = run_labtools_stop()
        assert f"Stopped the TF Serving binary (pid {server.process.pid}, ports {grpc_port} and {rest_port}).\n" \
            in stopped.stdout
        assert wait_for_exit(server.process.pid, 10)
    finally:
        server.stop()


def test_the_docker_backend_publishes_mounts_serves_and_cleans_up(fakes, monkeypatch, lab_configs):
    monkeypatch.setenv("LAB_DOCKER_RUN_OPTIONS", "--label lab=test")
    grpc_port, rest_port = free_port(), free_port()
    monitoring = lab_configs.parent / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    server = start_model_server("docker", lab_configs, grpc_port=grpc_port, rest_port=rest_port,
                                extra_flags=[f"--monitoring_config_file={monitoring}"])
    try:
        assert isinstance(server, DockerServer)
        wait_until_available(f"http://127.0.0.1:{rest_port}", "saved_model_half_plus_two_cpu", [123], timeout=90)
        assert predict(rest_port) == {"predictions": [2.5, 3.0, 4.5]}
        metrics = requests.get(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=10)
        assert metrics.status_code == 200
        assert "Adding/updating models" in server.log()
    finally:
        stopped = server.stop()
    name = f"lab-tfserving-{rest_port}"
    assert repr(stopped) == f"Stopped the TF Serving container {name} (ports {grpc_port} and {rest_port})."
    (run,) = [call for call in docker_calls(fakes) if call[0] == "run"]
    assert run == ["run", "-d", "--name", name, "-p", f"{rest_port}:8501", "-p", f"{grpc_port}:8500",
                   "-v", f"{lab_configs.parent.parent / 'models'}:/models:ro",
                   "-v", f"{lab_configs.parent}:/configs:ro",
                   "--label", "lab=test", STANDIN_IMAGE,
                   *tfserving_flags("/configs/models.config",
                                    extra_flags=["--monitoring_config_file=/configs/monitoring.config"])]
    assert docker_calls(fakes)[-1] == ["rm", "-f", name]
    assert subprocess.run(["docker", "ps"], capture_output=True, text=True).stdout == ""


def test_make_stop_removes_a_lab_container(fakes, lab_configs):
    rest_port = free_port()
    server = DockerServer(lab_configs, grpc_port=free_port(), rest_port=rest_port).start()
    try:
        stopped = run_labtools_stop()
        assert f"Stopped the TF Serving container lab-tfserving-{rest_port}.\n" in stopped.stdout
        assert ["rm", "-f", f"lab-tfserving-{rest_port}"] in docker_calls(fakes)
        assert subprocess.run(["docker", "ps"], capture_output=True, text=True).stdout == ""
    finally:
        server.started = False  # make stop removed it


def test_a_later_start_removes_an_earlier_lab_container_on_its_ports(fakes, lab_configs, capsys):
    grpc_port, rest_port = free_port(), free_port()
    DockerServer(lab_configs, grpc_port=grpc_port, rest_port=rest_port).start()
    with DockerServer(lab_configs, grpc_port=grpc_port, rest_port=rest_port):
        assert (f"Stopped an earlier lab container, lab-tfserving-{rest_port}, which held one of its ports.\n"
                in capsys.readouterr().out)
    assert subprocess.run(["docker", "ps"], capture_output=True, text=True).stdout == ""


def test_a_missing_image_says_how_to_pull_it(fakes, monkeypatch, lab_configs):
    monkeypatch.setenv("LAB_TFSERVING_IMAGE", DEFAULT_TFSERVING_IMAGE)
    with pytest.raises(LabError) as error:
        DockerServer(lab_configs, grpc_port=free_port(), rest_port=free_port()).start()
    assert str(error.value) == (
        f"The image {DEFAULT_TFSERVING_IMAGE} is not on this machine and could not be pulled (Error response from "
        'daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host): run '
        f"`docker pull {DEFAULT_TFSERVING_IMAGE}` where its registry answers, or set LAB_TFSERVING_IMAGE to an "
        "image you have.")
    assert ["pull", DEFAULT_TFSERVING_IMAGE] in docker_calls(fakes)


def test_the_docker_backend_without_an_engine_is_one_sentence(fakes, monkeypatch, lab_configs):
    monkeypatch.setenv("FAKE_DOCKER_ENGINE", "down")
    with pytest.raises(LabError) as error:
        start_model_server("docker", lab_configs, grpc_port=free_port(), rest_port=free_port())
    assert str(error.value) == ("Backend 'docker' needs a Docker engine, and `docker info` does not answer: start "
                                "Docker, or use backend 'binary' or 'local'.")


def test_a_failed_docker_run_is_one_sentence_with_the_next_step(fakes, monkeypatch, lab_configs):
    monkeypatch.setenv("FAKE_DOCKER_RUN_ERROR", "docker: Error response from daemon: driver failed programming "
                                                "external connectivity.")
    grpc_port, rest_port = free_port(), free_port()
    with pytest.raises(LabError) as error:
        DockerServer(lab_configs, grpc_port=grpc_port, rest_port=rest_port).start()
    assert str(error.value) == (
        f"Docker could not start {STANDIN_IMAGE} on ports {grpc_port} and {rest_port} (docker: Error response from "
        "daemon: driver failed programming external connectivity.): check the engine with `docker info`, run "
        "`make stop`, or change `grpc_port` / `rest_port`.")


def test_a_container_that_exits_is_named_and_removed(fakes, lab_configs):
    rest_port = free_port()
    server = DockerServer(lab_configs, grpc_port=free_port(), rest_port=rest_port, extra_flags=["--no_such_flag=4"])
    with pytest.raises(LabError, match=f"^The container lab-tfserving-{rest_port} \\({STANDIN_IMAGE}\\) exited before "
                                       "it answered: .*no_such_flag"):
        server.start()
    assert docker_calls(fakes)[-1] == ["rm", "-f", f"lab-tfserving-{rest_port}"]


def test_a_container_is_removed_when_its_starter_is_killed(fakes, lab_configs):
    rest_port = free_port()
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from utils.runtime.model_server_process import DockerServer
        DockerServer({str(lab_configs)!r}, grpc_port={free_port()}, rest_port={rest_port}).start()
        print("started", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT, env=os.environ)
    try:
        assert starter.stdout.readline() == "started\n"
    finally:
        starter.kill()
        starter.wait()
    record = model_server_process.DOCKER_RUN_DIR / f"lab-tfserving-{rest_port}.json"
    # The watchdog removes the container, then its record: wait for both.
    wait_until(lambda: not record.exists() and subprocess.run(["docker", "ps"], capture_output=True,
                                                              text=True).stdout == "",
               30, "the container and its record removed after its starter was killed")
    (removal,) = [call for call in docker_calls(fakes) if call[:2] == ["rm", "-f"]]
    assert len(removal[2]) == 64, "removed by id, which no later container with its name can have"
    assert subprocess.run(["docker", "ps"], capture_output=True, text=True).stdout == ""


def test_a_container_docker_refuses_to_remove_is_one_sentence(fakes, monkeypatch, lab_configs):
    rest_port = free_port()
    server = DockerServer(lab_configs, grpc_port=free_port(), rest_port=rest_port).start()
    name = f"lab-tfserving-{rest_port}"
    try:
        monkeypatch.setenv("FAKE_DOCKER_RM_ERROR", "Error response from daemon: removal already in progress")
        stopped = run_labtools_stop()
        assert stopped.returncode == 1
        assert stopped.stdout.endswith(
            f"Could not remove the lab's TF Serving containers: Docker could not remove the container {name} "
            f"(Error response from daemon: removal already in progress): run `docker rm -f {name}`.\n")
    finally:
        monkeypatch.delenv("FAKE_DOCKER_RM_ERROR")
        server.stop()
    assert subprocess.run(["docker", "ps"], capture_output=True, text=True).stdout == ""
