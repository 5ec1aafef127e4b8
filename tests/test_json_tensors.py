"""The REST JSON fast path for large float tensors agrees with the exact path, or steps aside."""

import json

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from model_server.rest_json.fast_paths import dense_shape_of_numeric_json, fast_float_request, float32_as_rapidjson
from model_server.rest_json.json_tensor import predict_request_from_json
from model_server.status import ServingError


@pytest.mark.parametrize("text, shape, dense", [
    (b"[[1,2],[3,4],[5,6]]", [3, 2], True),
    (b'{"b": "x", "a": [ [1 , 2] ,[3,4 ]] }', [2, 2], True),
    (b"[[1,2],[3],[4,5,6]]", [3, 2], False),  # same bracket and comma counts as [3, 2]
    (b"[[1,[2]],[3,4]]", [2, 2], False),
    (b"[[[1],[2]],[3,[4]]]", [2, 2, 1], False),
    (b"[[1,2],3]", [2, 2], False),
    (b"[[],[]]", [2, 0], False),
])
def test_dense_shape_check(text, shape, dense):
    assert dense_shape_of_numeric_json(text, shape) is dense


def big(instances, **extra):
    return json.dumps({**extra, "instances": instances}).encode()


def float_input(key="x"):
    info = meta_graph_pb2.TensorInfo(dtype=types_pb2.DT_FLOAT)
    return lambda signature_name: {key: info}


def test_fast_path_equals_exact_path():
    values = np.random.default_rng(0).random([3, 40, 40, 3]).astype(np.float32)
    body = big(values.tolist(), signature_name="serving_default")
    assert fast_float_request(body) is not None
    name, inputs, request_format = predict_request_from_json(body, float_input())
    assert name == "serving_default" and request_format == "row"
    np.testing.assert_array_equal(inputs["x"], values)
    columnar = json.dumps({"inputs": values.tolist()}).encode()
    np.testing.assert_array_equal(predict_request_from_json(columnar, float_input())[1]["x"], values)


@pytest.mark.parametrize("body", [
    big([[1.0]] * 5000 + [[1.0, 2.0]]),  # ragged
    big([[True]] * 5000),  # booleans are not floats
])
def test_fast_path_steps_aside_for_the_exact_errors(body):
    with pytest.raises(ServingError) as fast_or_exact:
        predict_request_from_json(body, float_input())
    assert fast_or_exact.value.message.startswith(("Failed to process element", "JSON Value", "Serving signature"))


@pytest.mark.parametrize("body", [
    big([[0.5]] * 5000, signature_name="[odd, name]"),  # brackets outside the tensor
    big([[0.5]] * 5000, extra="key"),  # keys TF Serving ignores
])
def test_fast_path_declines_unusual_bodies_and_the_exact_path_serves_them(body):
    assert fast_float_request(body) is None
    np.testing.assert_array_equal(predict_request_from_json(body, float_input())[1]["x"], np.full([5000, 1], 0.5))


def test_fast_path_turns_floats_beyond_float32_into_inf_as_the_exact_path_does():
    body = big([[1e300], [-1e300], [0.5]] * 2000)
    assert fast_float_request(body) is not None
    expected = np.array([[np.inf], [-np.inf], [0.5]] * 2000, dtype=np.float32)
    np.testing.assert_array_equal(predict_request_from_json(body, float_input())[1]["x"], expected)


@pytest.mark.parametrize("token, value", [("NaN", np.nan), ("Infinity", np.inf), ("-Infinity", -np.inf)])
def test_nan_and_infinity_tokens_take_the_exact_path(token, value):
    body = json.dumps({"instances": [[0.5]] * 5000}).replace("0.5]]", f"{token}]]").encode()
    assert fast_float_request(body) is None
    tensor = predict_request_from_json(body, float_input())[1]["x"]
    np.testing.assert_array_equal(tensor[-1], [value])
    assert tensor.shape == (5000, 1)


def test_fast_path_declines_a_double_within_a_few_ulps_of_a_float32_rounding_boundary():
    midpoint = (1.0 + 2.0 ** -24)  # halfway between two float32s: a few ulps of double decide the rounding
    values = np.full([5000, 1], midpoint)
    assert float32_as_rapidjson(values) is None
    assert float32_as_rapidjson(np.full([5000, 1], 0.1)) is not None


def test_fast_path_only_serves_float32_signatures():
    body = big([[0.1]] * 5000)
    double_input = meta_graph_pb2.TensorInfo(dtype=types_pb2.DT_DOUBLE)
    tensor = predict_request_from_json(body, lambda signature_name: {"x": double_input})[1]["x"]
    assert tensor.dtype == np.float64 and tensor[0, 0] == 0.1
