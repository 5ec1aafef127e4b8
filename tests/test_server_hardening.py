"""No request takes the server down (issue 22): each front end runs a bounded number of requests at
once (TF Serving's --rest_api_num_threads and --grpc_max_threads), input never gets a 500, and an
unloaded version is not kept alive by the batcher."""

import gc
import os
import shutil
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from conftest import TFSERVING_TESTDATA
from model_server.batching import BatchingOptions, BatchScheduler
from model_server.cli import FlagError, parse_flags, usage
from model_server.rest_json.json_tensor import predict_request_from_json
from model_server.server import grpc_running_limit, make_grpc_server
from model_server.status import ServingError
from server_harness import copy_fixture, running_server
from test_production import Servable, predict_request, scrape

CPUS = len(os.sched_getaffinity(0))
MODEL = ["--model_name=hp"]
# Each request waits this long in a batch of one for a second to join it: long enough for two
# requests sent together to meet, unless the server runs only one of them at a time.
BATCHING = """max_batch_size { value: 2 }
batch_timeout_micros { value: 2000000 }
num_batch_threads { value: 1 }
"""


# --- the flags ---------------------------------------------------------------------------------

def test_thread_flags_default_as_tf_serving_and_show_in_usage():
    options = parse_flags(["--model_base_path=/m"])
    assert options.rest_api_num_threads == 4 * CPUS, "server.h: http_num_threads = 4 x NumSchedulableCPUs"
    assert options.grpc_max_threads == 4 * CPUS, "4 x CPUs, as TF Serving"
    assert f"--rest_api_num_threads={4 * CPUS} " in usage()
    assert f"--grpc_max_threads={4 * CPUS} " in usage()


@pytest.mark.parametrize("flag, message", [
    ("--grpc_max_threads=0", "No thread quota available to even create the minimum required polling threads"),
    ("--grpc_max_threads=-3", "No thread quota available to even create the minimum required polling threads"),
    ("--rest_api_num_threads=0", "--rest_api_num_threads=0: the HTTP/REST API needs at least 1 thread"),
])
def test_thread_flags_below_one_are_refused(flag, message):
    with pytest.raises(FlagError, match=message):
        parse_flags(["--model_base_path=/m", flag])


# --- requests running at once ------------------------------------------------------------------

def batching_server(tmp_path, *flags):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    (tmp_path / "batching.config").write_text(BATCHING)
    monitoring = tmp_path / "monitoring.config"
    shutil.copy(TFSERVING_TESTDATA / "monitoring_config.txt", monitoring)
    return running_server(tmp_path, [*MODEL, f"--model_base_path={base}", "--enable_batching",
                                     f"--batching_parameters_file={tmp_path / 'batching.config'}",
                                     f"--monitoring_config_file={monitoring}", *flags], wait_for=[("hp", [123])])


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One REST thread; two gRPC threads, one of which polls: one request at a time on each."""
    with batching_server(tmp_path_factory.mktemp("limited"), "--rest_api_num_threads=1",
                         "--grpc_max_threads=2") as started:
        yield started


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory):
    with batching_server(tmp_path_factory.mktemp("unlimited")) as started:
        yield started


def batch_sizes(rest_url):
    """(batches run, requests in them) from the batching histogram."""
    samples = scrape(rest_url)
    count = sum(v for (name, _), v in samples.items() if name.endswith("input_batch_size_count"))
    total = sum(v for (name, _), v in samples.items() if name.endswith("input_batch_size_sum"))
    return count, total


def two_rest_predicts_at_once(rest_url):
    url = f"{rest_url}/v1/models/hp:predict"
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda x: requests.post(url, json={"instances": [x]}, timeout=60), [1.0, 3.0]))
    return [(answer.status_code, answer.json()) for answer in answers]


def two_grpc_predicts_at_once(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    barrier = threading.Barrier(2)

    def call(x):
        barrier.wait()
        try:
            return "OK", list(stub.Predict(predict_request([x]), timeout=60).outputs["y"].float_val)
        except grpc.RpcError as error:
            return error.code().name, error.details()

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(call, [1.0, 3.0]))


def test_rest_with_one_thread_runs_one_request_at_a_time(limited):
    _, rest_url, _ = limited
    before = batch_sizes(rest_url)
    assert two_rest_predicts_at_once(rest_url) == [(200, {"predictions": [2.5]}), (200, {"predictions": [3.5]})]
    batches, requests_run = (now - then for now, then in zip(batch_sizes(rest_url), before))
    assert (batches, requests_run) == (2, 2), "the second request waited for the thread: it could not join a batch"


def test_rest_with_the_default_threads_runs_requests_together(unlimited):
    _, rest_url, _ = unlimited
    before = batch_sizes(rest_url)
    assert two_rest_predicts_at_once(rest_url) == [(200, {"predictions": [2.5]}), (200, {"predictions": [3.5]})]
    batches, requests_run = (now - then for now, then in zip(batch_sizes(rest_url), before))
    assert (batches, requests_run) == (1, 2), "both requests ran at once, in one batch"


def test_grpc_past_its_threads_refuses_with_resource_exhausted(limited):
    _, rest_url, channel = limited
    answers = dict(two_grpc_predicts_at_once(channel))  # {status: details or outputs}, whichever came first
    assert sorted(answers) == ["OK", "RESOURCE_EXHAUSTED"], "one request runs, the one past the threads is refused"
    assert answers["RESOURCE_EXHAUSTED"] == "Concurrent RPC limit exceeded!"
    assert answers["OK"] in ([2.5], [3.5])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert list(stub.Predict(predict_request([5.0]), timeout=60).outputs["y"].float_val) == [4.5], \
        "the thread is free again once its request is done"


def test_grpc_with_the_default_threads_runs_requests_together(unlimited):
    _, rest_url, channel = unlimited
    before = batch_sizes(rest_url)
    assert two_grpc_predicts_at_once(channel) == [("OK", [2.5]), ("OK", [3.5])]
    assert tuple(now - then for now, then in zip(batch_sizes(rest_url), before)) == (1, 2)


# --- no 500 from input -------------------------------------------------------------------------

def nested(depth, leaf=b"1", closed=True):
    return b"[" * depth + leaf + (b"]" * depth if closed else b"")


@pytest.mark.parametrize("body, message", [
    (nested(100_000, closed=False), "JSON Parse error: Missing a comma or ']' after an array element. at offset: "
                                    "100001"),
    (b"[" * 100_000, "JSON Parse error: Invalid value. at offset: 100000"),
    (b'{"instances":' + nested(100_000) + b"}", "tensor parsing error: x"),
    (b'{"inputs":' + nested(100_000) + b"}", "tensor parsing error: x"),
    (b'{"inputs":{"x":' + nested(255) + b"}}", "tensor parsing error: x"),
    (b'{"instances":' + nested(65) + b"}", "tensor parsing error: x"),
    (b'{"inputs":' + nested(65) + b"}", "tensor parsing error: x"),
    (b'{"instances":[' + nested(64) + b"," + nested(64) + b"]}", "tensor parsing error: x"),
])
def test_deeply_nested_json_is_a_400_not_a_500(limited, body, message):
    _, rest_url, _ = limited
    answer = requests.post(f"{rest_url}/v1/models/hp:predict", data=body, timeout=60)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_64_dimensions_still_reach_the_model(limited):
    _, rest_url, _ = limited
    answer = requests.post(f"{rest_url}/v1/models/hp:predict", data=b'{"inputs":' + nested(64) + b"}", timeout=60)
    assert answer.status_code == 200
    outputs = answer.json()["outputs"]
    for _ in range(64):
        outputs = outputs[0]
    assert outputs == 2.5


def tensor_info(dtype):
    return {"x": meta_graph_pb2.TensorInfo(name="x:0", dtype=dtype)}


@pytest.mark.parametrize("dtype, numpy_type", [(types_pb2.DT_HALF, np.float16), (types_pb2.DT_COMPLEX64, np.complex64)])
def test_an_empty_tensor_of_a_type_json_cannot_write_is_built(dtype, numpy_type):
    _, inputs, _ = predict_request_from_json(b'{"inputs": []}', lambda name: tensor_info(dtype))
    assert inputs["x"].dtype == numpy_type and inputs["x"].shape == (0,)


def test_an_empty_tensor_of_a_type_numpy_cannot_hold_is_a_parsing_error():
    with pytest.raises(ServingError, match="^tensor parsing error: x$"):
        predict_request_from_json(b'{"instances": [[]]}', lambda name: tensor_info(types_pb2.DT_VARIANT))


# --- batching forgets an unloaded version ------------------------------------------------------

class Doubler:
    def run(self, signature_name, inputs, output_filter=()):
        return {"y": inputs["x"] * 2}


def test_the_batcher_lets_an_unloaded_version_go():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, num_batch_threads=2))
    servable = Servable(Doubler())
    for _ in range(3):
        scheduler.run(servable, "serving_default", {"x": np.ones([1, 1], np.float32)})
    version = weakref.ref(servable)
    del servable
    gc.collect()
    assert version() is not None, "its queue's runner holds the version"
    scheduler.forget(version())
    gc.collect()
    assert version() is None, "once forgotten, nothing in the batcher holds it, not even an idle batch thread"
    assert scheduler.run(Servable(Doubler()), "serving_default", {"x": np.ones([1, 1], np.float32)})["y"] == 2
    scheduler.close()


def test_grpc_with_one_thread_refuses_every_request():
    """grpc++ keeps its one thread polling, with none left to run a request: TF Serving started with
    --grpc_max_threads=1 answers everything RESOURCE_EXHAUSTED."""
    predictor = SimpleNamespace(server_core=None, runner=None)
    server = make_grpc_server(predictor, None, ThreadPoolExecutor(1), max_running=grpc_running_limit(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(predict_request([1.0]), timeout=30)
    finally:
        server.stop(None)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                             "Concurrent RPC limit exceeded!")
