"""TF Serving's error table: codes, HTTP statuses and messages; malformed bodies never 5xx."""

import random

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from server_harness import copy_fixture, running_server
from utils.deploy import models_config, write_config


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    base = copy_fixture("saved_model_half_plus_two_2_versions", tmp)
    config = tmp / "models.config"
    write_config(models_config("hp", base, [123, 124], {"stable": 123}), config)
    flags = [f"--model_config_file={config}", "--rest_api_max_body_bytes=1000000",
             "--allow_version_labels_for_unavailable_models"]  # a label at start-up, as TF Serving needs
    with running_server(tmp, flags, wait_for=[("hp", [123, 124])]) as running:
        yield running


@pytest.fixture
def rest(server):
    return server[1]


REST_ERRORS = [
    # (method, path, body, HTTP status, exact error message)
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/hp/versions/7", None, 404, "Could not find version 7 of model hp"),
    ("GET", "/v1/models/hp/labels/nope/metadata", None, 400, "Unrecognized servable version label: nope"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/hp/versions/x", None, 400, "Malformed request: GET /v1/models/hp/versions/x"),
    ("POST", "/v1/models/hp:explain", "{}", 400, "Malformed request: POST /v1/models/hp:explain"),
    ("POST", "/v1/models/nope:predict", '{"instances": [1.0]}', 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/hp/versions/7:predict", '{"instances": [1.0]}', 404,
     "Servable not found for request: Specific(hp, 7)"),
    ("POST", "/v1/models/hp/labels/canary:predict", '{"instances": [1.0]}', 400,
     "Unrecognized servable version label: canary"),
    ("POST", "/v1/models/hp:predict", '{"signature_name": "nope", "instances": [1.0]}', 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/hp:predict", "", 400, "JSON Parse error: The document is empty"),
    # TF Serving writes a "JSON Value" with rapidjson's PrettyWriter: arrays on one line, objects indented.
    ("POST", "/v1/models/hp:predict", "[1, 2]", 400, "JSON Value: [1, 2] Is not object"),
    ("POST", "/v1/models/hp:predict", '{"signature_name": 3, "instances": [1.0]}', 400,
     "JSON Value: {\n    \"signature_name\": 3,\n    \"instances\": [1.0]\n} not formatted correctly. "
     "'signature_name' key must be a string value."),
    ("POST", "/v1/models/hp:predict", '{"x": [1.0]}', 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/hp:predict", '{"instances": [1.0], "inputs": [1.0]}', 400,
     "JSON Value: {\n    \"instances\": [1.0],\n    \"inputs\": [1.0]\n} Not formatted correctly expecting only one "
     "of 'inputs' or 'instances' keys to exist "),
    ("POST", "/v1/models/hp:predict", '{"instances": 1.0}', 400,
     # TF Serving fixed its "Excepting" typo in 2020.
     "JSON Value: {\n    \"instances\": 1.0\n} Expecting 'instances' to be an list/array"),
    ("POST", "/v1/models/hp:predict", '{"instances": []}', 400,
     "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ("POST", "/v1/models/hp:predict", '{"instances": [[1.0], [1.0, 2.0]]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 "
     "but got: 2"),
    ("POST", "/v1/models/hp:predict", '{"instances": [[1.0, 2.0], [[1.0], [2.0]]]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: "
     "[2,1]"),
    ("POST", "/v1/models/hp:predict", '{"instances": ["a"]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: String "
     "is not of expected type: float"),
    ("POST", "/v1/models/hp:predict", '{"instances": [{"y": 1.0}]}', 400,
     "Failed to process element: 0 key: y of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
     "have named input: y"),
    ("POST", "/v1/models/hp:predict", '{"inputs": {"y": [1.0]}}', 400, "Missing named input: x in 'inputs' object."),
    # TF Serving's message names classify for regress requests too.
    ("POST", "/v1/models/hp:regress", '{"signature_name": "regress_x_to_y"}', 400,
     "JSON Value: {\n    \"signature_name\": \"regress_x_to_y\"\n} When method is classify, key 'examples' is "
     "expected and was not found"),
    ("POST", "/v1/models/hp:classify", '{"signature_name": "classify_x_to_y", "examples": []}', 400,
     "JSON Value: {\n    \"signature_name\": \"classify_x_to_y\",\n    \"examples\": []\n} 'examples' value is an "
     "empty array"),
    ("POST", "/v1/models/hp:classify", '{"signature_name": "classify_x_to_y", "examples": [{"x": [1.0, "a"]}]}',
     400, "Unexpected element type in feature: x expecting type: float"),
    ("POST", "/v1/models/hp:classify", '{"signature_name": "classify_x_to_y", "examples": [{"x": null}]}', 400,
     "Feature: x has element with unexpected JSON type: Null"),
    ("POST", "/v1/models/hp:classify", '{"signature_name": "classify_x_to_y", "examples": [3]}', 400,
     "Example must be JSON object but got JSON Number"),
    # classifier.cc's own message (GetClassificationSignatureDef), not predict's.
    ("POST", "/v1/models/hp:classify", '{"signature_name": "nope", "examples": [{"x": 1.0}]}', 400,
     "No signature was found with the name: nope"),
]


@pytest.mark.parametrize("method, path, body, status, message", REST_ERRORS,
                         ids=[f"{m} {p} {b or ''}"[:60] for m, p, b, *_ in REST_ERRORS])
def test_rest_error(rest, method, path, body, status, message):
    response = requests.request(method, f"{rest}{path}", data=body)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": message}


def test_rest_base64_errors(rest):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": {"b64": "%%%"}}]}
    response = requests.post(f"{rest}/v1/models/hp:classify", json=body)
    assert response.status_code == 400 and response.json() == {"error": "Unable to base64 decode"}


def test_rest_body_size_limit(rest):
    response = requests.post(f"{rest}/v1/models/hp:predict", data=b" " * 1_000_001)
    assert response.status_code == 413
    assert response.json() == {"error": "Request body of 1000001 bytes exceeds the limit of 1000000 bytes"}
    assert requests.post(f"{rest}/v1/models/hp:predict", json={"instances": [1.0]}).status_code == 200


def test_no_url_reaches_the_file_system(rest):
    for path in ("/../../etc/passwd", "/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/%2e%2e/metadata"):
        response = requests.get(f"{rest}{path}")
        assert response.status_code in (400, 404) and "root:" not in response.text


def test_thousands_of_malformed_bodies_never_5xx(rest):
    """Random mutations of valid bodies: never a 5xx other than 503, and the server survives."""
    rng = random.Random(20261124)
    seeds = [
        ("/v1/models/hp:predict", '{"instances": [[1.0], [2.0]]}'),
        ("/v1/models/hp:predict", '{"signature_name": "serving_default", "inputs": {"x": [[1.0]]}}'),
        ("/v1/models/hp/labels/stable:predict", '{"instances": [{"x": [1.0]}]}'),
        ("/v1/models/hp:classify", '{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}'),
        ("/v1/models/hp:regress", '{"signature_name": "regress_x_to_y", "context": {"x": 1}, "examples": [{}]}'),
    ]
    alphabet = '{}[]",:0123456789.eE-+ntrufalsb64x\\/\x00\xff'
    session = requests.Session()
    statuses = {}
    for _ in range(2500):
        path, body = rng.choice(seeds)
        body = list(body)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(body) + 1)
            action = rng.random()
            if action < 0.4 and body:
                del body[min(position, len(body) - 1)]
            elif action < 0.8:
                body.insert(position, rng.choice(alphabet))
            else:
                body[position:position] = list(rng.choice(['1e999', '[[[[', 'null', '{"b64": "@@"}', '"' * 3]))
        response = session.post(f"{rest}{path}", data="".join(body).encode("utf-8", "surrogateescape"))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text)
        assert "error" in response.json() or response.status_code == 200
    assert statuses.get(400, 0) > 1000, statuses
    assert requests.get(f"{rest}/v1/models/hp").status_code == 200


# --- gRPC ----------------------------------------------------------------------------

def _grpc_error(call, request):
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value.code(), raised.value.details()


def test_grpc_errors(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[2])
    request = predict_pb2.PredictRequest()
    assert _grpc_error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    request.model_spec.name = "nope"
    assert _grpc_error(stub.Predict, request) == (grpc.StatusCode.NOT_FOUND,
                                                  "Servable not found for request: Latest(nope)")
    request.model_spec.name = "hp"
    request.model_spec.version_label = "nope"
    assert _grpc_error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                  "Unrecognized servable version label: nope")
    request.model_spec.version.value = 123
    request.model_spec.signature_name = "nope"
    assert _grpc_error(stub.Predict, request) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                  'Serving signature key "nope" not found.')
    request.model_spec.signature_name = ""
    request.inputs["y"].CopyFrom(tf.make_tensor_proto([[1.0]]))
    assert _grpc_error(stub.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input tensor alias not found in signature: y. Inputs expected to be in the set {x}.")
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]]))
    assert _grpc_error(stub.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Request inputs do not match required inputs for model `hp`. Send extra: {y}. Missing but required: {}.")
    del request.inputs["y"]
    request.output_filter.append("z")
    assert _grpc_error(stub.Predict, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}.")
    del request.output_filter[:]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([["text"]]))
    code, details = _grpc_error(stub.Predict, request)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but string is provided")


def test_grpc_classify_and_metadata_errors(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[2])
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "hp", "classify_x_to_y"
    assert _grpc_error(stub.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "hp"
    assert _grpc_error(stub.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
    request.metadata_field.append("graph")
    assert _grpc_error(stub.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Metadata field graph is not supported")
    request = inference_pb2.MultiInferenceRequest()
    for name in ("hp", "other"):
        task = request.tasks.add()
        task.model_spec.name, task.method_name = name, "tensorflow/serving/regress"
    assert _grpc_error(stub.MultiInference, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Must specify the same model name across all tasks.")
    status_stub = model_service_pb2_grpc.ModelServiceStub(server[2])
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "hp"
    request.model_spec.version.value = 9
    assert _grpc_error(status_stub.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 9 of model hp")
