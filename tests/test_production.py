"""Warmup replay, Prometheus metrics and request batching, with TF Serving's semantics."""

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (classification_pb2, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from conftest import TFSERVING_TESTDATA
from model_server.batching import QUEUE_FULL, BatchingOptions, BatchScheduler
from model_server.status import ServingError
from server_harness import copy_fixture, run_server_to_exit, running_server
from utils.errors import LabError
from utils.warmup import WARMUP_FILE, write_warmup_requests

METRICS_PATH = "/monitoring/prometheus/metrics"


def monitoring_config(tmp_path):
    path = tmp_path / "monitoring.config"
    shutil.copy(TFSERVING_TESTDATA / "monitoring_config.txt", path)
    return path


def scrape(rest):
    """{(sample name, frozenset(labels)): value} from the server's Prometheus endpoint.

    prometheus_client's parser names counter samples `<name>_total`; TF Serving writes them
    without the suffix, so counters are checked to be written that way and keyed by `<name>`.
    """
    response = requests.get(f"{rest}{METRICS_PATH}")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter":
                assert f"\n{family.name}{{" in response.text and f"{family.name}_total" not in response.text
                name = family.name
            samples[(name, frozenset(sample.labels.items()))] = sample.value
    return samples


def predict_request(x, name="hp", signature="serving_default", key="x"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(np.array(x, np.float32).reshape(-1, 1)))
    return request


def example_request(message_class, signature):
    request = message_class()
    request.model_spec.name, request.model_spec.signature_name = "hp", signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    return request


# --- warmup ----------------------------------------------------------------------------

def test_warmup_replays_every_record_before_the_version_is_available(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    version_dir = base / "00000123"
    write_warmup_requests(version_dir, [
        predict_request([1.0]), predict_request([1.0, 2.0]),
        example_request(classification_pb2.ClassificationRequest, "classify_x_to_y"),
        example_request(regression_pb2.RegressionRequest, "regress_x_to_y"),
    ])
    flags = ["--model_name=hp", f"--model_base_path={base}", "--num_request_iterations_for_warmup=2",
             f"--monitoring_config_file={monitoring_config(tmp_path)}"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, rest, _):
        warmup_path = version_dir / WARMUP_FILE
        assert (f"Finished reading warmup data for model at {warmup_path}. Number of warmup records read: 4. "
                "Elapsed time (microseconds): ") in server.log()
        metrics = scrape(rest)
        runs = {api: metrics[(":tensorflow:serving:runtime_latency_count",
                              frozenset({"model_name": "hp", "API": api, "runtime": "TF1"}.items()))]
                for api in ("Predict", "Classify", "Regress")}
        assert runs == {"Predict": 4, "Classify": 2, "Regress": 2}, "4 records x 2 iterations, before any request"
        assert metrics[(":tensorflow:serving:model_warmup_latency_count",
                        frozenset({"model_path": str(version_dir), "status": "OK"}.items()))] == 1
        assert not any(name == ":tensorflow:serving:request_count" for name, _ in metrics), "warmup is no request"


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """(base path, server, REST URL): half_plus_two with no warmup file and no monitoring config, shared by the
    tests that only read what such a server logged at start-up or answers on a path it does not serve."""
    tmp_path = tmp_path_factory.mktemp("plain_server")
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    with running_server(tmp_path, ["--model_name=hp", f"--model_base_path={base}"],
                        wait_for=[("hp", [123])]) as (server, rest, _channel):
        yield base, server, rest


def test_no_warmup_file_is_logged_and_fine(plain_server):
    base, server, _ = plain_server
    assert f"No warmup data file found at {base / '00000123' / WARMUP_FILE}" in server.log()


def test_warmup_can_be_turned_off(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    write_warmup_requests(base / "00000123", [predict_request([1.0])])
    flags = ["--model_name=hp", f"--model_base_path={base}", "--enable_model_warmup=false"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (server, _, _channel):
        assert "warmup data" not in server.log()


def test_warmup_writer_refuses_more_than_tf_serving_accepts(tmp_path):
    with pytest.raises(LabError, match="at most 1000"):
        write_warmup_requests(tmp_path, [predict_request([1.0])] * 1001)


def _write_records(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


@pytest.mark.parametrize("case, message", [
    ("too_many", "Number of warmup records exceeds the maximum (1000) at "),
    ("corrupt", "Please verify your warmup data is in TFRecord format."),
    ("failing", "input tensor alias not found in signature: y."),
])
def test_bad_warmup_data_fails_the_load(tmp_path, case, message):
    from utils.warmup import prediction_log

    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    path = base / "00000123" / WARMUP_FILE
    if case == "too_many":
        _write_records(path, [prediction_log(predict_request([1.0])).SerializeToString()] * 1001)
    elif case == "corrupt":
        _write_records(path, [prediction_log(predict_request([1.0])).SerializeToString()])
        path.write_bytes(path.read_bytes()[:-3] + b"\x00\x01\x02")
    else:
        _write_records(path, [prediction_log(predict_request([1.0], key="y")).SerializeToString()])
    code, output = run_server_to_exit(["--model_name=hp", f"--model_base_path={base}", "--port=1"], timeout=120)
    assert code == 255, "a load that fails at start-up: TF Serving's 'Failed to start server', exit -1"
    assert message in output
    assert "Loading servable: {name: hp version: 123} failed" in output


# --- monitoring --------------------------------------------------------------------------

def test_metric_names_and_labels_are_tf_servings(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    flags = ["--model_name=hp", f"--model_base_path={base}", f"--monitoring_config_file={monitoring_config(tmp_path)}"]
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (_, rest, channel):
        assert requests.post(f"{rest}/v1/models/hp:predict", json={"instances": [[1.0]]}).status_code == 200
        assert requests.post(f"{rest}/v1/models/hp:predict", json={"instances": ["x"]}).status_code == 400
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request([1.0]))
        metrics = scrape(rest)
    samples = {}
    for name, labels in metrics:
        samples.setdefault(name, set()).add(frozenset(dict(labels)))
    assert metrics[(":tensorflow:serving:request_count", frozenset({"model_name": "hp", "status": "OK"}.items()))] == 2
    assert metrics[(":tensorflow:serving:request_count",
                    frozenset({"model_name": "hp", "status": "INVALID_ARGUMENT"}.items()))] == 1
    for entrypoint in ("REST", "GRPC"):
        assert (":tensorflow:serving:request_latency_count",
                frozenset({"model_name": "hp", "API": "Predict", "entrypoint": entrypoint}.items())) in metrics
    version_path = str(base / "00000123")
    assert metrics[(":tensorflow:cc:saved_model:load_attempt_count",
                    frozenset({"model_path": version_path, "status": "success"}.items()))] == 1
    assert metrics[(":tensorflow:cc:saved_model:load_latency", frozenset({"model_path": version_path}.items()))] > 0
    assert {"model_name", "API", "runtime"} == set(next(iter(samples[":tensorflow:serving:runtime_latency_bucket"]))) - {"le"}
    assert (":tensorflow:serving:model_warmup_latency_count",
            frozenset({"model_path": version_path, "status": "OK"}.items())) not in metrics, "no warmup file"


def test_monitoring_path_is_off_without_a_config(plain_server):
    _, _, rest = plain_server
    response = requests.get(f"{rest}{METRICS_PATH}")
    assert response.status_code == 400 and "Malformed request" in response.json()["error"]


@pytest.mark.parametrize("flag, content, message", [
    ("--monitoring_config_file", None, "Could not read"),
    ("--monitoring_config_file", "prometheus_config { enable: maybe }", "Invalid protobuf file"),
    ("--batching_parameters_file", "max_batch_size { value: 8 } allowed_batch_sizes: 4",
     "final entry in allowed_batch_sizes must equal max_batch_size"),
    ("--batching_parameters_file", "allowed_batch_sizes: 4 allowed_batch_sizes: 2",
     "allowed_batch_sizes entries must be monotonically increasing"),
    ("--batching_parameters_file", "num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
])
def test_bad_monitoring_or_batching_files_stop_the_server_at_start(tmp_path, flag, content, message):
    path = tmp_path / "config.txt"
    if content is not None:
        path.write_text(content)
    extra = ["--enable_batching"] if flag == "--batching_parameters_file" else []
    code, output = run_server_to_exit(["--model_base_path=/nowhere", f"{flag}={path}", *extra])
    assert code == 1 and message in output


# --- batching -----------------------------------------------------------------------------

class RecordingBundle:
    """A bundle stand-in that doubles its input and records the batch sizes it ran."""

    def __init__(self, delay=0.0):
        self.batch_sizes, self.delay = [], delay

    def run(self, signature_name, inputs, output_filter=()):
        time.sleep(self.delay)
        (value,) = inputs.values()
        self.batch_sizes.append(value.shape[0])
        return {"y": value * 2}


class Servable:
    def __init__(self, bundle):
        self.bundle, self.name, self.version = bundle, "stub", 1


def run_concurrently(scheduler, servable, arrays):
    results, errors = [None] * len(arrays), [None] * len(arrays)

    def call(i):
        try:
            results[i] = scheduler.run(servable, "serving_default", {"x": arrays[i]})["y"]
        except ServingError as error:
            errors[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(arrays))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_batches_merge_and_split_back_exactly():
    # The four tasks fill max_batch_size exactly, so the batch closes when full, whatever order they arrive
    # in; the long timeout only bounds a hang.
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1))
    servable = Servable(RecordingBundle())
    arrays = [np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 100 * n for n in (1, 2, 3, 2)]
    results, errors = run_concurrently(scheduler, servable, arrays)
    scheduler.close()
    assert errors == [None] * 4
    for array, result in zip(arrays, results):
        np.testing.assert_array_equal(result, array * 2)
    assert servable.bundle.batch_sizes == [8], "the four requests were merged into one session run"


def test_allowed_batch_sizes_pad_and_slice():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, allowed_batch_sizes=(2, 4), num_batch_threads=1))
    servable = Servable(RecordingBundle())
    result = scheduler.run(servable, "serving_default", {"x": np.array([[7.0]], np.float32)})
    scheduler.close()
    assert servable.bundle.batch_sizes == [2] and result["y"].tolist() == [[14.0]]


def test_variable_length_inputs_are_padded_only_when_asked():
    arrays = [np.ones([1, 2], np.float32), np.ones([1, 3], np.float32)]
    for pad in (True, False):
        scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, batch_timeout_micros=500_000, num_batch_threads=1,
                                                   pad_variable_length_inputs=pad))
        results, errors = run_concurrently(scheduler, Servable(RecordingBundle()), arrays)
        scheduler.close()
        if pad:
            assert errors == [None, None] and {r.shape for r in results} == {(1, 3)}
        else:
            assert all("padding is turned off" in e.message for e in errors)


def test_task_larger_than_max_batch_size_and_full_queue():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000, max_enqueued_batches=1,
                                               num_batch_threads=1))
    servable = Servable(RecordingBundle())
    with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch size 4") as too_big:
        scheduler.run(servable, "serving_default", {"x": np.ones([5, 1], np.float32)})
    assert too_big.value.code == grpc.StatusCode.INVALID_ARGUMENT
    first = threading.Thread(target=scheduler.run, args=(servable, "serving_default", {"x": np.ones([3, 1], np.float32)}))
    first.start()
    deadline = time.monotonic() + 5
    while scheduler.enqueued_tasks == 0 and time.monotonic() < deadline:  # wait until queued
        time.sleep(0.01)
    with pytest.raises(ServingError, match=QUEUE_FULL) as full:
        scheduler.run(servable, "serving_default", {"x": np.ones([3, 1], np.float32)})
    assert full.value.code == grpc.StatusCode.UNAVAILABLE and full.value.http_status == 503
    first.join()
    scheduler.close()


def test_server_batches_rest_and_grpc_together_with_equal_results(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    params = tmp_path / "batching.config"
    # 16 requests of 2 rows fill two batches of 16 exactly: each closes when full, whatever the arrival
    # order; the long timeout only bounds a hang.
    params.write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 60000000 } "
                      "num_batch_threads { value: 1 } max_enqueued_batches { value: 100 }")
    flags = ["--model_name=hp", f"--model_base_path={base}", "--enable_batching",
             f"--batching_parameters_file={params}", f"--monitoring_config_file={monitoring_config(tmp_path)}",
             "--grpc_max_threads=64"]  # 8 gRPC requests wait in a batch at once: more than 4 per CPU runs
    with running_server(tmp_path, flags, wait_for=[("hp", [123])]) as (_, rest, channel):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        values = [[float(i), float(i) + 0.5] for i in range(16)]
        answers = {}

        def via_rest(i):
            answers[i] = requests.post(f"{rest}/v1/models/hp:predict",
                                       json={"instances": [[v] for v in values[i]]}).json()["predictions"]

        def via_grpc(i):
            output = stub.Predict(predict_request(values[i])).outputs["y"]
            answers[i] = tf.make_ndarray(output).tolist()

        threads = [threading.Thread(target=via_rest if i % 2 else via_grpc, args=(i,)) for i in range(len(values))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        too_big = requests.post(f"{rest}/v1/models/hp:predict", json={"instances": [[1.0]] * 17})
        metrics = scrape(rest)
    for i, pair in enumerate(values):
        assert answers[i] == [[0.5 * v + 2] for v in pair], "batched equals unbatched, element for element"
    assert too_big.status_code == 400
    assert too_big.json() == {"error": "Task size 17 is larger than maximum input batch size 16"}
    pool = frozenset({"thread_pool_name": "model_server_batch_threads"}.items())
    batches = metrics[(":tensorflow:serving:batching_session:processed_batch_size_count", pool)]
    rows = metrics[(":tensorflow:serving:batching_session:input_batch_size_sum", pool)]
    assert rows == 32
    assert batches == 2, "REST and gRPC requests were merged into two full session runs"
    assert (":tensorflow:serving:batching_session:queuing_latency_count", pool) in metrics


def test_load_generator_counts_failures_apart_from_timings():
    from utils.loadgen import run_load

    calls = iter(range(10))

    def flaky():
        if next(calls) % 3 == 0:
            raise RuntimeError("HTTP 503: queue full")

    result = run_load(flaky, 10, concurrency=1)
    assert (result.sent, result.failures, len(result.latencies)) == (10, 4, 6)
    assert result.summary()["failed"] == 4 and result.throughput > 0


def test_a_request_with_no_prediction_log_type_is_one_sentence(tmp_path):
    from tensorflow_serving.apis import model_management_pb2

    from utils.errors import LabError
    from utils.warmup import write_warmup_requests

    with pytest.raises(LabError, match=r"^No PredictionLog type for ReloadConfigRequest\.$"):
        write_warmup_requests(tmp_path, [model_management_pb2.ReloadConfigRequest()])
