"""model_server against TensorFlow Serving's own test models and their published results."""

import json

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from google.protobuf import json_format

from conftest import TFSERVING_TESTDATA
from server_harness import copy_fixture, label_version, running_server

CONFIG = """
model_config_list {
  config { name: "half_plus_two" base_path: "%(tf1)s" model_platform: "tensorflow" }
  config { name: "half_plus_two_tf2" base_path: "%(tf2)s" model_platform: "tensorflow" }
  config { name: "counter" base_path: "%(counter)s" model_platform: "tensorflow" }
  config {
    name: "two_versions" base_path: "%(two)s" model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 123 }
    version_labels { key: "canary" value: 124 }
  }
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fixtures")
    paths = {
        "tf1": copy_fixture("saved_model_half_plus_two_cpu", tmp),
        "tf2": copy_fixture("saved_model_half_plus_two_tf2_cpu", tmp),
        "counter": copy_fixture("saved_model_counter", tmp),
        "two": copy_fixture("saved_model_half_plus_two_2_versions", tmp),
    }
    config = tmp / "models.config"
    config.write_text(CONFIG % paths)
    waits = [("half_plus_two", [123]), ("half_plus_two_tf2", [123]), ("counter", [123]),
             ("two_versions", [123, 124])]
    # Labels at start-up point at versions not loaded yet: TF Serving needs this flag for them.
    flags = [f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models"]
    with running_server(tmp, flags, wait_for=waits) as running:
        yield running


@pytest.fixture
def rest(server):
    return server[1]


@pytest.fixture
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server[2])


def post(rest, path, body):
    return requests.post(f"{rest}{path}", data=body if isinstance(body, (str, bytes)) else json.dumps(body))


# --- REST: TF Serving's published results ---------------------------------------------

@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_rest_predict(rest, model):
    response = post(rest, f"/v1/models/{model}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.status_code == 200 and response.json() == {"predictions": [2.5, 3.0, 4.5]}
    response = post(rest, f"/v1/models/{model}:predict", {"instances": [2.0, 3.0, 4.0]})
    assert response.json() == {"predictions": [3.0, 3.5, 4.0]}


def test_rest_predict_columnar(rest):
    response = post(rest, "/v1/models/half_plus_two:predict", {"inputs": [[1.0], [2.0]]})
    assert response.json() == {"outputs": [[2.5], [3.0]]}


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_rest_classify_and_regress(rest, model):
    response = post(rest, f"/v1/models/{model}:classify",
                    {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert response.status_code == 200 and response.json() == {"results": [[["", 3.0]]]}
    response = post(rest, f"/v1/models/{model}:regress",
                    {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert response.json() == {"results": [3.0]}


def test_rest_classify_with_context(rest):
    response = post(rest, "/v1/models/half_plus_two:regress",
                    {"signature_name": "regress_x_to_y", "context": {"x": 4.0}, "examples": [{}, {"x": 2.0}]})
    assert response.json() == {"results": [4.0, 3.0]}


def test_rest_status(rest):
    response = requests.get(f"{rest}/v1/models/half_plus_two")
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_metadata_matches_tf_serving(rest):
    response = requests.get(f"{rest}/v1/models/half_plus_two/metadata")
    assert response.status_code == 200
    published = json.loads((TFSERVING_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert response.json() == {**published, "model_spec": {**published["model_spec"], "name": "half_plus_two"}}


def test_rest_metadata_of_a_tf2_model_lists_its_signatures(rest):
    body = requests.get(f"{rest}/v1/models/half_plus_two_tf2/metadata").json()
    assert body["model_spec"] == {"name": "half_plus_two_tf2", "signature_name": "", "version": "123"}
    # The keys of TF Serving's saved_model_half_plus_two_tf2_2_versions_metadata.json (test_testdata.py
    # cross-checks that the built model declares the same).
    assert set(body["metadata"]["signature_def"]["signature_def"]) == {
        "serving_default", "regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3", "classify_x_to_y",
        "classify_x2_to_y3", "__saved_model_init_op"}


def test_two_versions_by_version_and_by_label(rest):
    for path in ("/v1/models/two_versions/versions/123", "/v1/models/two_versions/labels/stable"):
        response = post(rest, f"{path}:predict", {"instances": [[1.0]]})
        assert response.status_code == 200 and response.json() == {"predictions": [[2.5]]}
    status = requests.get(f"{rest}/v1/models/two_versions").json()
    assert [s["version"] for s in status["model_version_status"]] == ["124", "123"]
    assert label_version(rest, "two_versions", "canary") == 124


def test_counter_model_keeps_state(stub):
    def call(signature, **inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "counter"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
        return float(tf.make_ndarray(stub.Predict(request).outputs["output"]))

    call("reset_counter")
    assert call("incr_counter") == 1.0
    assert call("incr_counter") == 2.0
    assert call("incr_counter_by", delta=3.0) == 5.0
    assert call("get_counter") == 5.0
    assert call("reset_counter") == 0.0


# --- gRPC --------------------------------------------------------------------------------

def test_grpc_predict(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0], [5.0]], dtype=tf.float32))
    response = stub.Predict(request)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[2.5], [3.0], [4.5]])
    assert response.model_spec.name == "half_plus_two" and response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def _examples_input(message, value=2.0):
    example = message.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(value)


def test_grpc_classify_regress_multi_inference(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "classify_x_to_y"
    _examples_input(request)
    assert stub.Classify(request).result.classifications[0].classes[0].score == 3.0
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    _examples_input(request)
    assert stub.Regress(request).result.regressions[0].value == 3.0
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in [("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y", "tensorflow/serving/regress")]:
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = "half_plus_two", signature, method
    _examples_input(request)
    results = stub.MultiInference(request).results
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 3.0


def test_grpc_metadata_equals_published_json(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = stub.GetModelMetadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    published = json.loads((TFSERVING_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    expected = json_format.ParseDict(published["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap())
    assert signature_map == expected


def test_grpc_model_status(server):
    stub = model_service_pb2_grpc.ModelServiceStub(server[2])
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "two_versions"
    versions = {s.version: s.state for s in stub.GetModelStatus(request).model_version_status}
    assert versions == {123: 30, 124: 30}


def test_grpc_accepts_a_19_mb_message(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    values = np.ones([32 * 224 * 224 * 3, 1], np.float32)  # as many floats as 32 images: 19 MB
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    assert request.ByteSize() > 19_000_000
    outputs = tf.make_ndarray(stub.Predict(request).outputs["y"])
    assert outputs.shape == values.shape and float(outputs[0, 0]) == 2.5


def test_status_by_label_lists_every_version_as_tf_serving_does(rest):
    """get_model_status_impl.cc filters on a version only; a label, even an unknown one, lists them all."""
    for label in ("canary", "no_such_label"):
        status = requests.get(f"{rest}/v1/models/two_versions/labels/{label}").json()
        assert [s["version"] for s in status["model_version_status"]] == ["124", "123"]
