"""`make bench`: its own servers (labtools.bench_servers), started as the bench starts them, each answer what
they were canned with (a gRPC floor with what the served path answered), and one that exits fails its start at
once; bad settings are refused before anything starts, and the servers' pool sizes reach them as TF Serving's
flags; a timed load counts the CPU spent on it, a failed request ends the bench, the peer's loads alternate, and
no server is allowed more than the cores give."""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from labtools import bench
from labtools.bench_servers import BenchServer
from model_server.cli import parse_flags
from utils.errors import LabError
from utils.payloads import predict_request

START_TIMEOUT = 120  # the gRPC floor imports TensorFlow, on a shared machine


def started(kind, argument, log_dir):
    return BenchServer(kind, sys.executable, [argument], log_dir).start(START_TIMEOUT)


def test_rest_floor_answers_every_request_with_its_canned_body(tmp_path):
    body = json.dumps({"predictions": [2.5, 3.0]}).encode()
    (tmp_path / "response.json").write_bytes(body)
    server = started("floor-rest", tmp_path / "response.json", tmp_path)
    try:
        answer = requests.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0]},
                               timeout=10)
    finally:
        server.stop()
    assert answer.content == body


def test_grpc_floor_answers_every_predict_with_its_canned_response(tmp_path):
    canned = predict_pb2.PredictResponse()
    canned.model_spec.name = "half_plus_two"
    canned.outputs["y"].float_val.extend([2.5, 3.0])
    (tmp_path / "response.pb").write_bytes(canned.SerializeToString())
    server = started("floor-grpc", tmp_path / "response.pb", tmp_path)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answer = stub.Predict(predict_request("half_plus_two", "serving_default", {"x": [1.0, 2.0]}), timeout=10)
    finally:
        server.stop()
    assert answer == canned


def test_a_canned_grpc_floor_answers_with_what_the_served_path_answered(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    served = predict_pb2.PredictResponse()
    served.outputs["probabilities"].float_val.extend([0.25, 0.75])
    request = predict_request("lab", "serving_default", {"x": [1.0]})

    class AnswersServed(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return served

    original = grpc.server(ThreadPoolExecutor(1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(AnswersServed(), original)
    port = original.add_insecure_port("127.0.0.1:0")
    original.start()
    try:
        copy = bench.canned_grpc_floor("floor-grpc-copy", f"127.0.0.1:{port}", request).start(START_TIMEOUT)
    finally:
        original.stop(grace=None)
    try:
        with grpc.insecure_channel(copy.target) as channel:
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    finally:
        copy.stop()
    assert answer == served
    assert (tmp_path / "floor-grpc-copy-response.pb").read_bytes() == served.SerializeToString()


def test_a_bench_server_that_exits_fails_its_start_naming_its_log(tmp_path):
    server = BenchServer("floor-rest", sys.executable, [tmp_path / "missing.json"], tmp_path)
    try:
        with pytest.raises(LabError, match="floor-rest.log"):
            server.start(START_TIMEOUT)
    finally:
        server.stop()


@pytest.mark.parametrize("argv, message", [
    (["--requests", "10"], "--requests must be at least 50"),
    (["--floor-requests", "31"], "--floor-requests must be at least 32 (two halves of 16 clients each)"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--intra-op-threads", "-1"], "must be 0 (TensorFlow's choice) or more"),
    (["--inter-op-threads", "-2"], "must be 0 (TensorFlow's choice) or more"),
])
def test_bench_refuses_bad_settings_in_one_sentence_before_starting_anything(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_servers_pool_sizes_are_tf_servings_own_flags():
    args = argparse.Namespace(intra_op_threads=1, inter_op_threads=0)
    options = parse_flags(["--model_base_path=/m", *bench.pool_flags(args)])
    assert (options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism) == (1, 0)


def busy(seconds):
    """Spend `seconds` of this thread's CPU."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


def test_a_timed_load_counts_the_cpu_this_process_and_the_server_spend():
    timed = bench.timed_load("busy", lambda: busy(0.005), 20, clients=2, server=psutil.Process())
    assert timed.load.sent == 20 and not timed.load.failures
    assert timed.own_ms >= 5
    # The "server" here is this process and its children, counted in 10 ms ticks at each end.
    assert timed.server_cpu >= 20 * 0.005 - 0.02
    assert bench.timed_load("busy", lambda: busy(0.001), 4, clients=1).server_cpu is None


def test_a_failed_request_ends_the_bench_naming_its_path():
    def refused():
        raise RuntimeError("HTTP 503: overloaded")

    with pytest.raises(SystemExit, match=r"^3 batched requests failed: \['HTTP 503: overloaded'"):
        bench.timed_load("batched", refused, 3, clients=1)


def test_alternated_loads_send_ours_theirs_theirs_ours_and_join_each_paths_halves():
    sent = []
    calls = {"ours": lambda: sent.append("ours"), "theirs": lambda: sent.append("theirs")}
    loads = bench.alternated_loads(calls, 8, clients=1, processes={})
    # Each half is one warm-up request and four timed ones.
    assert sent == ["ours"] * 5 + ["theirs"] * 10 + ["ours"] * 5
    assert {name: timed.load.sent for name, timed in loads.items()} == {"ours": 8, "theirs": 8}
    assert all(timed.server_cpu is None for timed in loads.values())


def test_no_server_beats_the_cpu_its_model_and_clients_need_on_these_cores(monkeypatch):
    monkeypatch.setattr(bench, "CORES", 2)
    assert bench.best_throughput(model_ms=10, client_ms=0) == 200
    assert bench.best_throughput(model_ms=10, client_ms=2.5) == 160
