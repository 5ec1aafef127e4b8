"""Which API names and which requests TF Serving's request and runtime metrics record."""

import grpc
import pytest
import requests
from tensorflow_serving.apis import classification_pb2, inference_pb2, prediction_service_pb2_grpc, regression_pb2

from server_harness import copy_fixture, running_server
from test_production import example_request, monitoring_config, predict_request, scrape
from utils.deploy import models_config, write_config

MODELS = ("classify_regress", "multi", "failures")  # one model per test: the metrics add up per server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp)
    config = models_config(MODELS[0], base, [123])
    for name in MODELS[1:]:
        config.model_config_list.config.add().CopyFrom(models_config(name, base, [123]).model_config_list.config[0])
    write_config(config, tmp / "models.config")
    flags = [f"--model_config_file={tmp / 'models.config'}", f"--monitoring_config_file={monitoring_config(tmp)}"]
    with running_server(tmp, flags, wait_for=[(name, [123]) for name in MODELS]) as (_, rest, channel):
        yield rest, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def sample(name, **labels):
    return (name, frozenset(labels.items()))


def with_model(request, name):
    request.model_spec.name = name
    return request


def runtime_apis(metrics, model):
    return {dict(labels)["API"] for name, labels in metrics
            if name == ":tensorflow:serving:runtime_latency_count" and dict(labels)["model_name"] == model}


def test_classify_and_regress_runtime_latency_is_recorded_under_their_own_api_names(server):
    rest, stub = server
    stub.Classify(with_model(example_request(classification_pb2.ClassificationRequest, "classify_x_to_y"),
                             "classify_regress"))
    stub.Regress(with_model(example_request(regression_pb2.RegressionRequest, "regress_x_to_y"), "classify_regress"))
    metrics = scrape(rest)
    assert runtime_apis(metrics, "classify_regress") == {"Classify", "Regress"}
    for api in ("Classify", "Regress"):
        assert metrics[sample(":tensorflow:serving:runtime_latency_count", model_name="classify_regress", API=api,
                              runtime="TF1")] == 1
        assert metrics[sample(":tensorflow:serving:request_latency_count", model_name="classify_regress", API=api,
                              entrypoint="GRPC")] == 1


def test_multi_inference_records_no_request_or_runtime_metrics(server):
    rest, stub = server
    request = inference_pb2.MultiInferenceRequest()
    for method, signature in [("tensorflow/serving/classify", "classify_x_to_y"),
                              ("tensorflow/serving/regress", "regress_x_to_y")]:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "multi", signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    assert len(stub.MultiInference(request).results) == 2
    metrics = scrape(rest)
    assert not [key for key in metrics if dict(key[1]).get("model_name") == "multi"]


def test_a_failed_request_is_counted_but_records_no_latency(server):
    rest, stub = server
    response = requests.post(f"{rest}/v1/models/failures:predict", json={"instances": ["not a number"]})
    assert response.status_code == 400
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_request([1.0], name="failures", key="y"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    metrics = scrape(rest)
    assert metrics[sample(":tensorflow:serving:request_count", model_name="failures", status="INVALID_ARGUMENT")] == 2
    assert not [key for key in metrics if key[0].startswith(":tensorflow:serving:request_latency")
                and dict(key[1])["model_name"] == "failures"]
    assert runtime_apis(metrics, "failures") == set(), "no session ran"
