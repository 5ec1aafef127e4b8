"""A version that unloads is freed then, as TF Serving deletes a servable once no request holds it: the
server's own classes, driven in-process, serve a version over REST and gRPC through the batcher, then
unload it with Python's cyclic garbage collector paused, so only what the unload itself releases is gone."""

import gc
import json
import threading
import weakref
from contextlib import contextmanager

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from conftest import TFSERVING_TESTDATA
from model_server.cli import parse_flags
from model_server.contract import BatchingParameters
from model_server.http_rest_api_handler import HttpRestApiHandler
from model_server.server import ModelServer, make_grpc_server
from utils.deploy import models_config, write_config
from utils.payloads import predict_request

pytestmark = pytest.mark.server

MODEL = "half_plus_two"
BASE_PATH = TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions"
# Two requests fill a batch; one alone would wait the batch timeout, far past the requests' deadline.
BATCH_SIZE, BATCH_TIMEOUT_MICROS, REQUEST_SECONDS = 2, 60_000_000, 30


@contextmanager
def in_process_server(tmp_path, version):
    """A ModelServer serving `version` of half_plus_two with batching on, and its gRPC front end on a free
    port; yields (server, REST handler, PredictionService stub)."""
    batching = BatchingParameters()
    batching.max_batch_size.value, batching.batch_timeout_micros.value = BATCH_SIZE, BATCH_TIMEOUT_MICROS
    batching.num_batch_threads.value = 1
    write_config(batching, tmp_path / "batching.config")
    write_config(models_config(MODEL, BASE_PATH, [version]), tmp_path / "models.config")
    server = ModelServer(parse_flags([f"--model_config_file={tmp_path / 'models.config'}", "--enable_batching",
                                      f"--batching_parameters_file={tmp_path / 'batching.config'}"]))
    server.server_core.apply_config(server.initial_config())
    grpc_server = make_grpc_server(server.predictor, server.reload_config, server.grpc_executor,
                                   metrics=server.metrics, max_running=server.grpc_max_running)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    rest = HttpRestApiHandler(server.predictor, server.rest_executor, server.options.rest_api_max_body_bytes,
                              metrics=server.metrics)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, rest, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    finally:
        grpc_server.stop(grace=None).wait()
        server.server_core.close()
        server.batcher.close()
        server.grpc_executor.shutdown()
        server.rest_executor.shutdown()


def predict_in_one_batch(rest, stub, version):
    """A REST and a gRPC predict on `version` at once: they only return as one batch of two."""
    answers = {}

    def rest_predict():
        body = json.dumps({"instances": [[1.0]]}).encode()
        answers["rest"] = json.loads(rest.dispatch("POST", f"/v1/models/{MODEL}/versions/{version}:predict", body))

    def grpc_predict():
        request = predict_request(MODEL, "", {"x": tf.constant([[3.0]])}, version=version)
        answers["grpc"] = tf.make_ndarray(stub.Predict(request, timeout=REQUEST_SECONDS).outputs["y"]).tolist()

    threads = [threading.Thread(target=rest_predict), threading.Thread(target=grpc_predict)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_SECONDS)
    return answers


def test_an_unloaded_version_that_served_traffic_is_freed_when_it_unloads(tmp_path):
    with in_process_server(tmp_path, 123) as (server, rest, stub):
        assert predict_in_one_batch(rest, stub, 123) == {"rest": {"predictions": [[2.5]]}, "grpc": [[3.5]]}
        bundle = server.server_core.version_states(MODEL)[123].bundle
        released = {"SavedModelBundle": weakref.ref(bundle), "Session": weakref.ref(bundle.session),
                    "Graph": weakref.ref(bundle.graph)}
        del bundle
        gc.disable()
        try:
            server.reload_config(models_config(MODEL, BASE_PATH, [124]))  # loads 124, then unloads 123
            alive = sorted(name for name, ref in released.items() if ref() is not None)
        finally:
            gc.enable()
        assert server.server_core.version_states(MODEL)[123].state == "END"
        assert alive == [], f"still alive after version 123 unloaded: {alive}"
        assert predict_in_one_batch(rest, stub, 124) == {"rest": {"predictions": [[2.5]]}, "grpc": [[3.5]]}
