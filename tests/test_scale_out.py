"""Notebook 07's rehearsal: replicas from the Deployment, haproxy checking them with its readiness probe,
draining without failures, and the HPA's arithmetic."""

import shutil
import subprocess
import sys
import threading

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import TFSERVING_TESTDATA
from model_server.contract import CHANNEL_OPTIONS
from server_harness import copy_fixture
from utils.appendix import k8s
from utils.appendix.haproxy import INSTALL_HINT, SERVED_BY, LoadBalancer, haproxy_config, health_check
from utils.appendix.rehearsal import Replica, replica_backend, retarget, write_config_map
from utils.deploy import models_config, write_config
from utils.runtime.model_server_process import LocalModelServer, wait_until_available
from utils.paths import PROJECT_ROOT
from utils.runtime.processes import HAPROXY, free_port, lab_processes

METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def base():
    return k8s.render(k8s.BASE_DIR)


@pytest.fixture(scope="module")
def template(base):
    return k8s.PodTemplate(k8s.one(base, "Deployment"))


# --- reading the Deployment for a local replica ---------------------------------------------------

def test_local_args_give_a_replica_its_ports_and_host_paths(template):
    assert template.local_args(9600, 9601, {"/etc/tfserving": "/tmp/cm", "/models": "/lab/models"}) == [
        "--port=9600", "--rest_api_port=9601", "--model_config_file=/tmp/cm/models.config",
        "--model_config_file_poll_wait_seconds=10", "--allow_version_labels_for_unavailable_models",
        "--monitoring_config_file=/tmp/cm/monitoring.config", "--enable_batching",
        "--batching_parameters_file=/tmp/cm/batching.config"]


def test_host_path_maps_only_paths_inside_a_mount():
    mounts = {"/models": "/lab/models"}
    assert [k8s.host_path(p, mounts) for p in ("/models/m", "/models", "/modelsx/m", "relative")] == [
        "/lab/models/m", "/lab/models", "/modelsx/m", "relative"]


@pytest.mark.parametrize("strategy, expected", [
    ({}, (1, 0)),  # Kubernetes' defaults, 25% each: surge rounds up, unavailable down
    ({"maxSurge": "100%", "maxUnavailable": "50%"}, (3, 1)),
    ({"maxSurge": 2, "maxUnavailable": 1}, (2, 1)),
])
def test_rolling_update_counts_round_like_kubernetes(strategy, expected):
    deployment = {"spec": {"replicas": 3, "strategy": {"rollingUpdate": strategy}}}
    assert k8s.PodTemplate(deployment).rolling_update == expected


@pytest.mark.parametrize("quantity, cores", [("500m", 0.5), ("2", 2.0), (0.25, 0.25), ("1500m", 1.5)])
def test_cpu_quantities(quantity, cores):
    assert k8s.cpu_cores(quantity) == cores


def test_the_hpa_scales_on_the_manifests_cpu_target(base):
    assert k8s.hpa_target_utilization(k8s.one(base, "HorizontalPodAutoscaler")) == 60


@pytest.mark.parametrize("current, utilizations, expected", [
    (3, [90, 90, 90], 5),  # ratio 1.5: ceil(4.5)
    (3, [65, 65, 65], 3),  # ratio 1.083: within the tolerance, no change
    (3, [66, 66, 66], 4),  # ratio 1.1 is 1.1000000000000001 in floating point, as in the controller: ceil(3.3)
    (3, [59.9, 59.9, 59.9], 3),  # 59.9 % counts as 59 %, as the controller's integer percent
    (3, [500, 500, 500], 6),  # capped at maxReplicas
    (6, [10] * 6, 3),  # ceil(1) = 1, raised to minReplicas
    (5, [40] * 5, 4),  # ratio 0.667: ceil(3.33)
    (3, [0, 60, 120], 3),  # the mean counts, not the busiest pod
])
def test_hpa_formula(current, utilizations, expected):
    assert k8s.hpa_desired_replicas(current, utilizations, target=60, min_replicas=3, max_replicas=6) == expected


def test_write_config_map_maps_base_paths_like_the_volume(tmp_path, base):
    config_map = k8s.one(base, "ConfigMap")
    write_config_map(config_map, tmp_path, {"/models": "/lab/models"})
    written = k8s.read_models_config({"metadata": {"name": "x"}, "data": {"models.config": (
        tmp_path / "models.config").read_text()}})
    assert written.model_config_list.config[0].base_path == "/lab/models/efficientnet_lite"
    assert (tmp_path / "batching.config").read_text() == config_map["data"]["batching.config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batching.config", "models.config", "monitoring.config"]


def test_retarget_serves_another_model_with_the_same_labels(base):
    retargeted = retarget(base, "resnet", [50, 101])
    (model,) = k8s.read_models_config(k8s.one(retargeted, "ConfigMap")).model_config_list.config
    assert (model.name, model.base_path) == ("resnet", "/models/resnet")
    assert list(model.model_version_policy.specific.versions) == [50, 101]
    assert dict(model.version_labels) == {"stable": 50, "canary": 101}
    probe = k8s.PodTemplate(k8s.one(retargeted, "Deployment")).readiness_probe
    assert probe["httpGet"]["path"] == "/v1/models/resnet/labels/stable/metadata"
    assert k8s.cross_check(retargeted) == []


def test_retarget_leaves_the_manifests_unchanged(base):
    before = k8s.one(base, "ConfigMap")["data"]["models.config"]
    retarget(base, "resnet", [50, 101])
    assert k8s.one(base, "ConfigMap")["data"]["models.config"] == before


# --- a replica on TF Serving's binary ----------------------------------------------------------------

FAKE_BINARY = PROJECT_ROOT / "tests" / "fakes" / "bin" / "tensorflow_model_server"


def test_a_replica_on_the_binary_backend_starts_is_ready_and_stops(tmp_path, monkeypatch, base, template):
    monkeypatch.setenv("LAB_TFSERVING_BINARY", str(FAKE_BINARY))  # the shim runs the stand-in
    monkeypatch.setenv("LAB_STANDIN_PYTHON", sys.executable)
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions", tmp_path / "models" / "hp")
    host_paths = {template.mount_path("config"): str(tmp_path / "cm"), "/models": str(tmp_path / "models")}
    write_config_map(k8s.one(retarget(base, "hp", [123, 124]), "ConfigMap"), tmp_path / "cm", host_paths)
    replica = Replica("pod-0", template, free_port(), free_port(), host_paths, tmp_path, backend="binary")
    assert replica.description == f"TF Serving binary {FAKE_BINARY}"
    replica.start()
    try:
        wait_until_available(f"http://127.0.0.1:{replica.rest_port}", "hp", [123, 124], process=replica.process)
        assert replica.label_version("hp", "stable") == 123
    finally:
        stopped = replica.stop()
    assert stopped.exit_code == 0


def test_the_docker_backend_rehearses_on_processes(monkeypatch, capsys):
    monkeypatch.setenv("LAB_TFSERVING_BINARY", str(FAKE_BINARY))
    assert replica_backend("docker") == "binary"
    assert "not one container each" in capsys.readouterr().out


# --- haproxy ---------------------------------------------------------------------------------------

def test_health_check_follows_the_readiness_probe(template):
    assert health_check(template.readiness_probe) == {
        "path": "/v1/models/efficientnet_lite/labels/stable/metadata", "inter_s": 2, "timeout_s": 2, "fall": 2,
        "rise": 1}


def test_health_check_takes_kubernetes_defaults():
    assert health_check({"httpGet": {"path": "/p", "port": "http"}}) == {
        "path": "/p", "inter_s": 10, "timeout_s": 1, "fall": 3, "rise": 1}


@pytest.fixture(scope="module")
def haproxy_binary():
    binary = HAPROXY.find()
    assert binary is not None, INSTALL_HINT
    return binary


def test_haproxy_accepts_the_config(tmp_path, template, haproxy_binary):
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(health_check(template.readiness_probe), 1, 2, 3, METRICS_PATH,
                                     tmp_path / "admin.sock"))
    result = subprocess.run([haproxy_binary, "-c", "-f", config], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def label_probe(label):
    return {"httpGet": {"path": f"/v1/models/hp/labels/{label}/metadata", "port": "http"}, "periodSeconds": 1,
            "failureThreshold": 1}


def start_replica(tmp_path, config, name):
    grpc_port, rest_port = free_port(), free_port()
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={config}",
             "--model_config_file_poll_wait_seconds=1", "--allow_version_labels_for_unavailable_models"]
    server = LocalModelServer(flags, log_path=tmp_path / f"{name}.log").start()
    return server, grpc_port, rest_port


def test_a_replica_gets_traffic_only_once_its_labels_version_is_available(tmp_path, haproxy_binary):
    base_path = tmp_path / "hp"
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123", base_path / "123")
    config = tmp_path / "models.config"
    write_config(models_config("hp", base_path, [123], {"stable": 123}), config)
    balancer = LoadBalancer(label_probe("canary"), free_port(), free_port(), free_port(), METRICS_PATH,
                            tmp_path / "haproxy").start()
    server, grpc_port, rest_port = start_replica(tmp_path, config, "pod-0")
    rest = f"http://127.0.0.1:{rest_port}"
    try:
        balancer.add("pod-0", rest_port, grpc_port)
        wait_until_available(rest, "hp", [123], process=server.process)
        assert requests.get(f"{rest}/v1/models/hp/labels/canary/metadata").status_code == 400  # no such label
        write_config(models_config("hp", base_path, [123, 124], {"stable": 123, "canary": 124}), config)
        wait_for_status(f"{rest}/v1/models/hp/labels/canary/metadata", 404)  # the label's version is not loaded
        assert requests.get(f"{rest}/v1/models/hp").status_code == 200  # the trap: status says 200 regardless
        assert not balancer.ready("pod-0")
        shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions" / "00000124", base_path / "124")
        balancer.wait_until_ready("pod-0", timeout=60, process=server.process)
        metadata = requests.get(f"{balancer.rest_url}/v1/models/hp/labels/canary/metadata").json()
        assert metadata["model_spec"]["version"] == "124"
    finally:
        server.stop()
        balancer.stop()


def wait_for_status(url, status, attempts=100):
    """Poll `url` until it answers `status` (0.1 s apart, via a threading.Event so no bare sleep)."""
    pause = threading.Event()
    for _ in range(attempts):
        if requests.get(url, timeout=2).status_code == status:
            return
        pause.wait(0.1)
    raise AssertionError(f"{url} never answered {status}")


def test_draining_a_replica_under_load_fails_no_request(tmp_path, haproxy_binary):
    base_path = copy_fixture("saved_model_half_plus_two_2_versions", tmp_path)
    config = tmp_path / "models.config"
    write_config(models_config("hp", base_path, [123], {"stable": 123}), config)
    balancer = LoadBalancer(label_probe("stable"), free_port(), free_port(), free_port(), METRICS_PATH,
                            tmp_path / "haproxy").start()
    replicas = {name: start_replica(tmp_path, config, name) for name in ("pod-0", "pod-1")}
    channel = grpc.insecure_channel(balancer.grpc_target, options=CHANNEL_OPTIONS)
    try:
        for name, (server, grpc_port, rest_port) in replicas.items():
            balancer.add(name, rest_port, grpc_port)
        for name, (server, _, _) in replicas.items():
            balancer.wait_until_ready(name, timeout=90, process=server.process)
        served, failures, stop = [], [], threading.Event()

        def load(call):
            while not stop.is_set():
                try:
                    served.append(call())
                except (grpc.RpcError, requests.RequestException, AssertionError) as error:
                    failures.append(error)

        threads = [threading.Thread(target=load, args=(call,)) for call in (rest_call(balancer), grpc_call(channel))]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: {("REST", "pod-0"), ("REST", "pod-1"), ("gRPC", "pod-0"), ("gRPC", "pod-1")}
                       <= set(served))
            balancer.drain("pod-0")
            replicas["pod-0"][0].stop()
            balancer.remove("pod-0")
            drained_at = len(served)
            wait_until(lambda: len(served) > drained_at + 20)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == []
        assert {name for _, name in served[drained_at:]} == {"pod-1"}
    finally:
        channel.close()
        for server, _, _ in replicas.values():
            server.stop()
        balancer.stop()


def rest_call(balancer):
    session = requests.Session()

    def call():
        response = session.post(f"{balancer.rest_url}/v1/models/hp/labels/stable:predict", json={"instances": [1.0]})
        assert response.status_code == 200, response.text
        return "REST", response.headers[SERVED_BY]
    return call


def grpc_call(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp"
    request.model_spec.version_label = "stable"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))

    def call():
        _, rpc = stub.Predict.with_call(request, timeout=30)
        return "gRPC", dict(rpc.initial_metadata())[SERVED_BY]
    return call


def wait_until(condition, timeout=60):
    pause = threading.Event()
    for _ in range(int(timeout * 10)):
        if condition():
            return
        pause.wait(0.1)
    raise AssertionError("the condition did not hold in time")


def test_haproxy_is_recorded_for_make_stop(tmp_path, template, haproxy_binary):
    balancer = LoadBalancer(template.readiness_probe, free_port(), free_port(), free_port(), METRICS_PATH,
                            tmp_path / "haproxy").start()
    try:
        assert [r.kind for r in lab_processes() if r.pid == balancer.managed.pid] == ["haproxy"]
    finally:
        stopped = balancer.stop()
    assert stopped.exit_code == 0
