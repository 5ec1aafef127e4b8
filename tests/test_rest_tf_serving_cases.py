"""TF Serving's own REST cases, end to end: util/json_tensor_test.cc, http_rest_api_handler_test.cc, api_rest.md.

Each row runs through `python -m model_server` against a small SavedModel built for its
signature (an echo model with one signature per case), or against TF Serving's fixtures
where its tests use them, and compares the status and the whole body byte for byte: the
JSON structure, floats as TF Serving writes them (WriteDecimal), rapidjson's PrettyWriter
layout, and the error message.
"""

import asyncio
import json
import socket

import pytest
import requests
import tensorflow as tf
from aiohttp import ClientSession, test_utils

from model_server.http_rest_api_handler import HttpRestApiHandler
from server_harness import copy_fixture, running_server

HALF_PLUS_TWO = "saved_model_half_plus_two_2_versions"
HALF_PLUS_THREE = "saved_model_half_plus_three"
MAX_BODY_BYTES = 4_000_000


def build_echo_model(export_dir):
    """One SavedModel, one signature per case: mostly `y = x` for a type."""
    module = tf.Module()

    def echo(dtype, output="y"):
        return tf.function(lambda x: {output: tf.identity(x)}, input_signature=[tf.TensorSpec(None, dtype, name="x")])

    signatures = {name: echo(dtype).get_concrete_function() for name, dtype in [
        ("float", tf.float32), ("double", tf.float64), ("int32", tf.int32), ("int64", tf.int64), ("bool", tf.bool),
        ("string", tf.string), ("half", tf.float16)]}
    signatures["bytes"] = echo(tf.string, "y_bytes").get_concrete_function()

    @tf.function(input_signature=[tf.TensorSpec(None, tf.int32, name="int_tensor"),
                                  tf.TensorSpec(None, tf.string, name="str_tensor"),
                                  tf.TensorSpec(None, tf.float32, name="float_tensor"),
                                  tf.TensorSpec(None, tf.float64, name="dbl_tensor")])
    def multi(int_tensor, str_tensor, float_tensor, dbl_tensor):
        return {"int_tensor": tf.identity(int_tensor), "str_tensor": tf.identity(str_tensor),
                "float_tensor": tf.identity(float_tensor), "dbl_tensor": tf.identity(dbl_tensor)}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def scalar_string(x):
        return {"s": tf.constant(b"scalar")}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def complex_output(x):
        return {"y": tf.complex(x, x)}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def uneven_batch(x):
        return {"a": tf.identity(x), "b": tf.constant([1.0, 2.0, 3.0])}

    signatures.update(multi=multi.get_concrete_function(), scalar_string=scalar_string.get_concrete_function(),
                      complex=complex_output.get_concrete_function(), uneven_batch=uneven_batch.get_concrete_function())
    tf.saved_model.save(module, str(export_dir), signatures=signatures)


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tf_serving_cases")
    build_echo_model(tmp / "echo" / "1")
    half_plus_two, half_plus_three = copy_fixture(HALF_PLUS_TWO, tmp), copy_fixture(HALF_PLUS_THREE, tmp)
    config = tmp / "models.config"
    config.write_text(f'''model_config_list {{
        config {{ name: "echo" base_path: "{tmp / 'echo'}" model_platform: "tensorflow" }}
        config {{ name: "{HALF_PLUS_THREE}" base_path: "{half_plus_three}" model_platform: "tensorflow" }}
        config {{ name: "{HALF_PLUS_TWO}" base_path: "{half_plus_two}" model_platform: "tensorflow"
                  model_version_policy {{ specific {{ versions: 123 }} }}
                  version_labels {{ key: "Version_Label" value: 123 }} }} }}''')
    with running_server(tmp, [f"--model_config_file={config}", f"--rest_api_max_body_bytes={MAX_BODY_BYTES}",
                              "--allow_version_labels_for_unavailable_models"],
                        wait_for=[("echo", [1]), (HALF_PLUS_THREE, [123]), (HALF_PLUS_TWO, [123])]) as (_, url, _):
        yield url


# The layouts rapidjson's PrettyWriter gives TF Serving's bodies.
def predictions(*rows):
    """Row format, one output: every instance on the first line, then the closing bracket."""
    return '{\n    "predictions": [' + ", ".join(rows) + "\n    ]\n}"


def results(values):
    return '{\n    "results": [' + values + "]\n}"


def error(message):
    return '{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}"


def echo(signature, key, value):
    return f'{{"signature_name": "{signature}", "{key}": {value}}}'


HP2, HP3 = f"/v1/models/{HALF_PLUS_TWO}", f"/v1/models/{HALF_PLUS_THREE}"
PREDICT = "/v1/models/echo:predict"
DEEP = "[" * 500000 + "]" * 500000
MULTIPLE_NAMED_INSTANCES = '''{"signature_name": "multi", "instances": [
    {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
    {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity],
     "dbl_tensor": [2.0]}]}'''

CASES = [
    # (where the case comes from, method, path, body, HTTP status, the whole body expected)

    # --- 1. regress feeds serialized examples whatever type the signature declares
    ("api_rest.md: regress call on half_plus_three", "POST", f"{HP3}:regress",
     '{"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}', 200,
     results("3.5, 4.0")),
    ("api_rest.md: predict call on half_plus_three", "POST", f"{HP3}:predict", '{"instances": [1.0,2.0,5.0]}', 200,
     predictions("3.5", "4.0", "5.5")),
    ("api_rest.md: incorrect request URL", "POST", "/v1/models/half:predict", '{"instances": [1.0,5.0]}', 404,
     error("Servable not found for request: Latest(half)")),
    ("http_rest_api_handler_test.cc: Regress", "POST", f"{HP2}:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', 200, results("42.0")),
    ("http_rest_api_handler_test.cc: Regress (version label)", "POST", f"{HP2}/labels/Version_Label:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', 200, results("42.0")),
    ("http_rest_api_handler_test.cc: Classify", "POST", f"{HP2}:classify",
     '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }', 200,
     '{\n    "results": [[["", 12.0]]\n    ]\n}'),

    # --- 2. NaN, Infinity and -Infinity in requests; 3. written back as such
    ("json_tensor_test.cc: MultipleNamedTensor", "POST", PREDICT, MULTIPLE_NAMED_INSTANCES, 200,
     '{\n    "predictions": [\n'
     '        {\n            "dbl_tensor": [NaN],\n            "float_tensor": [1.0, NaN],\n'
     '            "int_tensor": [[1, 2], [3, 4], [5, 6]],\n            "str_tensor": ["foo", "bar"]\n        },\n'
     '        {\n            "dbl_tensor": [2.0],\n            "float_tensor": [2.0, Infinity],\n'
     '            "int_tensor": [[7, 8], [9, 0], [1, 2]],\n            "str_tensor": ["baz", "bat"]\n        }\n'
     '    ]\n}'),
    ("json_tensor_test.cc: FromJsonSingleFloatTensorNonFinite", "POST", PREDICT,
     echo("float", "instances", "[[NaN, Infinity], [3, -Infinity]]"), 200,
     predictions("[NaN, Infinity]", "[3.0, -Infinity]")),
    ("json_tensor_test.cc: RequestWithContextAndSignature, JsonFromRegressionResultWithNonFinite", "POST",
     f"{HP2}:regress", '{"signature_name": "regress_x_to_y", "context": {"y": "pizza"}, '
                       '"examples": [{"x": NaN}, {"x": Infinity}, {"x": -Infinity}, {"x": 2.0}]}', 200,
     results("NaN, Infinity, -Infinity, 3.0")),

    # --- 4. outputs TF Serving writes, or refuses, in JSON
    ("json_tensor_test.cc: FromJsonSingleTensorErrors (complex64)", "POST", PREDICT,
     echo("complex", "instances", "[1.0]"), 400, error("Failed to write JSON value for tensor type: complex64")),
    ("json_tensor_test.cc: FromJsonSingleTensorErrors (no shape information)", "POST", PREDICT,
     echo("scalar_string", "instances", "[1.0]"), 400, error("Tensor name: s has no shape information ")),
    ("json_tensor.cc: MakeColumnarFormatJsonFromTensors (scalar string output)", "POST", PREDICT,
     echo("scalar_string", "inputs", "[1.0]"), 200, '{\n    "outputs": "scalar"\n}'),
    ("json_tensor_test.cc: FromJsonMultipleNamedTensorsErrors", "POST", PREDICT,
     echo("uneven_batch", "instances", "[1.0, 2.0]"), 400,
     error("Tensor name: b has inconsistent batch size: 3 expecting: 2")),

    # --- 5. floats beyond float32's range become ±inf, below it ±0
    ("json_tensor_test.cc: FloatTensorThatExceedsMaxReturnsInf", "POST", PREDICT,
     echo("float", "instances", "[1.79769e+308, -1.79769e+308]"), 200, predictions("Infinity", "-Infinity")),
    ("json_tensor_test.cc: FloatTensorThatExceedsMinReturnsZero", "POST", PREDICT,
     echo("float", "instances", "[2.22507e-308, -2.22507e-308]"), 200, predictions("0.0", "-0.0")),
    ("json_tensor_test.cc: FloatTensorWithPrecisionLoss", "POST", PREDICT,
     echo("float", "instances", "[1435774380, 1435774380.0]"), 200, predictions("1.43577434e+09", "1.43577434e+09")),

    # --- 6. parser limits: no nesting limit, bytes after the document ignored
    ("json_tensor_test.cc: DeeplyNestedWellFormed", "POST", PREDICT,
     '{"signature_name": "int32", "instances":[1], "nested":' + DEEP + "}", 200, predictions("1")),
    ("json_tensor_test.cc: DeeplyNestedMalformed", "POST", PREDICT, '{"signature_name":' + DEEP + "}", 400,
     # The value is written until the message passes 256 bytes (JsonWriterWithLimit).
     error('JSON Value: {\n    "signature_name": ' + "[" * 232 +
           " not formatted correctly. 'signature_name' key must be a string value.")),
    ("json_tensor_test.cc: TensorFromNonNullTerminatedBuffer", "POST", PREDICT,
     echo("int32", "instances", "[[1,2],[3,4],[5,6]]") + "X", 200, predictions("[1, 2]", "[3, 4]", "[5, 6]")),

    # --- 7. TF Serving 2.21's messages
    ("http_rest_api_handler_test.cc: PredictRequestErrors (badly formatted JSON)", "POST", f"{HP2}:predict",
     "instances = [1, 2]", 400, error("JSON Parse error: Invalid value. at offset: 0")),
    ("http_rest_api_handler_test.cc: PredictRequestErrors (empty document)", "POST", f"{HP2}:predict", "", 400,
     error("JSON Parse error: The document is empty")),
    ("http_rest_api_handler_test.cc: PredictRequestErrors (incorrect type)", "POST", f"{HP2}:predict",
     '{ "instances": ["x", "y"] }', 400,
     error("Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\" Type: "
           "String is not of expected type: float")),
    ("http_rest_api_handler_test.cc: PredictRequestErrors (signature_name type)", "POST", f"{HP2}:predict",
     '{ "signature_name": 100 }', 400,
     error("JSON Value: {\n    \"signature_name\": 100\n} not formatted correctly. 'signature_name' key must be a "
           "string value.")),
    ("http_rest_api_handler_test.cc: PredictRequestErrors (nonexistent label)", "POST",
     f"{HP2}/labels/Version_Nonexistent:predict", '{ "instances": ["x", "y"] }', 400,
     error("Unrecognized servable version label: Version_Nonexistent")),
    ("json_tensor.cc: FillPredictRequestFromJson (Expecting, fixed in 2020)", "POST", PREDICT,
     echo("float", "instances", "1.0"), 400,
     error('JSON Value: {\n    "signature_name": "float",\n    "instances": 1.0\n} Expecting \'instances\' to be an '
           "list/array")),
    ("json_tensor_test.cc: ClassifyRegressRequestTest.JsonErrors (uint64)", "POST", f"{HP2}:classify",
     '{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}', 400,
     error("Feature: names has uint64_t element. Only int64_t is supported.")),
    ("json_tensor_test.cc: ClassifyRegressRequestTest.JsonErrors (context before examples)", "POST",
     f"{HP2}:regress", '{"context": [ { "names": [ "foo", "bar" ] } ]}', 400,
     error("Example must be JSON object but got JSON Array")),
    ("json_tensor.cc: FillClassifyRegressRequestFromJson (regress names classify)", "POST", f"{HP2}:regress",
     '{"signature_name": "regress_x_to_y"}', 400,
     error('JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key \'examples\' is '
           "expected and was not found")),
    ("json_tensor_test.cc: ClassifyRegressRequestTest.JsonErrors (int64 then float)", "POST", f"{HP2}:classify",
     '{"examples": [ { "names": [ 10, 10.0 ] } ]}', 400,
     error("Unexpected element type in feature: names expecting type: int64")),
    ("json_tensor_test.cc: ClassifyRegressRequestTest.JsonErrors (examples not a list)", "POST", f"{HP2}:classify",
     '{"examples": { "names": [ "foo", "bar" ] }}', 400,
     error('JSON Value: {\n    "examples": {\n        "names": ["foo", "bar"]\n    }\n} Expecting \'examples\' value '
           "to be an list/array")),
    ("json_tensor_test.cc: SingleUnnamedTensorErrors (size)", "POST", PREDICT,
     echo("int32", "instances", "[[1,2],[3,4],[5,6,7]]"), 400,
     error("Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 "
           "but got: 3")),
    ("json_tensor_test.cc: SingleUnnamedTensorErrors (shape)", "POST", PREDICT,
     echo("int32", "instances", "[1, [1]]"), 400,
     error("Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [] but "
           "got: [1]")),
    ("json_tensor_test.cc: SingleUnnamedTensorErrors (type)", "POST", PREDICT,
     echo("int32", "instances", '[[1,2],["a", "b"]]'), 400,
     error("Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: "
           "String is not of expected type: int32")),
    ("json_tensor_test.cc: MultipleNamedTensorErrors (object then list)", "POST", PREDICT,
     '{"signature_name": "multi", "instances": [{"int_tensor": 1, "str_tensor": "a", "float_tensor": 1, '
     '"dbl_tensor": 1}, [1, 20, 30]]}', 400, error("Expecting object but got list at item 1 of input list")),
    ("json_tensor_test.cc: MultipleNamedTensorErrors (list then object)", "POST", PREDICT,
     echo("string", "instances", '[["baz", "bar"], {"x": ["baz", "bat"]}]'), 400,
     error("Expecting value/list but got object at item 1 of input list")),
    ("json_tensor.cc: AddValueToTensor (no JSON conversion for half)", "POST", PREDICT,
     echo("half", "inputs", "[1.0]"), 501, error("Conversion of JSON Value: 1.0 to type: half")),

    # --- 8. number formatting: six significant digits when they round-trip
    ("json_tensor_test.cc: FromJsonSingleFloatTensorSixDigitPrecision", "POST", PREDICT,
     echo("float", "instances", "[[9000000, 999999, 0.50000], [0.0003, 0.00003, 555557.5]]"), 200,
     predictions("[9e+06, 999999.0, 0.5]", "[0.0003, 3e-05, 555557.5]")),
    ("json_tensor_test.cc: MixedInputForFloatTensor", "POST", PREDICT,
     echo("float", "instances", "[1, 2.0, 3, 4, 5.003, 0.007, 0.0]"), 200,
     predictions("1.0", "2.0", "3.0", "4.0", "5.003", "0.007", "0.0")),
    ("json_tensor_test.cc: MixedInputForDoubleTensor", "POST", PREDICT,
     echo("double", "instances", "[1.0, 2, 3, 4, 0.662, 0, 0.0, 0.1, 0.3333333333333333]"), 200,
     predictions("1.0", "2.0", "3.0", "4.0", "0.662", "0.0", "0.0", "0.1", "0.33333333333333331")),

    # --- 9. the verb is matched exactly
    ("http_rest_api_handler.cc: ProcessRequest (verb compared exactly)", "POST", f"{HP2}:PREDICT",
     '{"instances": [1.0]}', 400, error(f"Malformed request: POST {HP2}:PREDICT")),
    ("http_rest_api_handler_test.cc: UnsupportedApiCalls", "POST", "/v1/models/foo/metadata", "", 400,
     error("Malformed request: POST /v1/models/foo/metadata")),
    ("http_rest_api_handler_test.cc: UnsupportedApiCalls (version overflow)", "POST",
     "/v1/models/foo/versions/18446744073709551615:regress", "", 400,
     error("Failed to convert version: 18446744073709551615 to numeric.")),

    # --- happy paths: row and columnar formats, b64 strings, int64, bool
    ("http_rest_api_handler_test.cc: Predict", "POST", f"{HP2}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}',
     200, predictions("[2.5, 3.0]", "[3.5, 4.0]")),
    ("http_rest_api_handler_test.cc: Predict (columnar)", "POST", f"{HP2}/versions/123:predict",
     '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}', 200,
     '{\n    "outputs": [\n        3.5,\n        4.0\n    ]\n}'),
    ("json_tensor_test.cc: SingleUnnamedTensor", "POST", PREDICT, echo("int32", "instances", "[[1,2],[3,4],[5,6]]"),
     200, predictions("[1, 2]", "[3, 4]", "[5, 6]")),
    ("json_tensor_test.cc: SingleUnnamedTensorColumnarFormat", "POST", PREDICT,
     echo("int32", "inputs", '{"x": [[1,2]]}'), 200,
     '{\n    "outputs": [\n        [\n            1,\n            2\n        ]\n    ]\n}'),
    ("json_tensor_test.cc: MultipleNamedTensorColumnarFormat", "POST", PREDICT,
     '{"signature_name": "multi", "inputs": {"int_tensor": [[1,2]], "str_tensor": { "b64" : "aGVsbG8=" }, '
     '"float_tensor": [NaN], "dbl_tensor": 0.5}}', 200,
     '{\n    "outputs": {\n        "dbl_tensor": 0.5,\n        "float_tensor": [\n            NaN\n        ],\n'
     '        "int_tensor": [\n            [\n                1,\n                2\n            ]\n        ],\n'
     '        "str_tensor": "hello"\n    }\n}'),
    ("json_tensor_test.cc: SingleUnnamedTensorBase64Scalars", "POST", PREDICT,
     echo("string", "instances", '[ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]'), 200,
     predictions('"hello"', '"world"')),
    ("json_tensor_test.cc: SingleUnnamedTensorBase64Lists, FromJsonSingleBytesTensor", "POST", PREDICT,
     echo("bytes", "instances", '[ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]'), 200,
     '{\n    "predictions": [[{\n                "b64": "aGVsbG8="\n            }], [{\n'
     '                "b64": "d29ybGQ="\n            }]\n    ]\n}'),
    ("api_rest.md: JSON mapping (DT_INT64)", "POST", PREDICT,
     echo("int64", "instances", "[[-9223372036854775808, 9223372036854775807], [0, 1]]"), 200,
     predictions("[-9223372036854775808, 9223372036854775807]", "[0, 1]")),
    ("api_rest.md: JSON mapping (DT_INT64, beyond its range)", "POST", PREDICT,
     echo("int64", "instances", "[9223372036854775808]"), 400,
     error("Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
           "9223372036854775808 Type: Number is not of expected type: int64")),
    ("api_rest.md: JSON mapping (DT_BOOL)", "POST", PREDICT,
     echo("bool", "instances", "[[true, false], [false, true]]"), 200, predictions("[true, false]", "[false, true]")),
]


@pytest.mark.parametrize("source, method, path, body, status, expected", CASES, ids=[c[0] for c in CASES])
def test_tf_serving_case(rest, source, method, path, body, status, expected):
    response = requests.request(method, f"{rest}{path}", data=body.encode())
    assert (response.status_code, response.headers["Content-Type"]) == (status, "application/json")
    assert response.content.decode() == expected


# --- no answer that is not JSON -------------------------------------------------------------------

def raw_http(url, request):
    """Send raw bytes as an HTTP request; returns (status, headers text, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode(), body


def test_malformed_http_is_answered_in_json(rest):
    status, head, body = raw_http(rest, b"G@T /v1/models/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and "application/json" in head
    assert json.loads(body)["error"].startswith("Bad Request")


def test_too_large_a_chunked_body_is_answered_in_json(rest):
    size = MAX_BODY_BYTES + 1
    status, head, body = raw_http(rest, b"POST /v1/models/echo:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n" + f"{size:x}\r\n".encode()
                                  + b" " * size + b"\r\n0\r\n\r\n")
    assert status == 413 and "application/json" in head
    assert json.loads(body) == {"error": f"Request body exceeds the limit of {MAX_BODY_BYTES} bytes"}


class FailingCore:
    def servable_handle(self, model_spec):
        raise RuntimeError("the core broke")


def test_an_unexpected_exception_is_a_json_500():
    async def request():
        api = HttpRestApiHandler(FailingCore(), executor=None, max_body_bytes=1 << 20)
        async with test_utils.TestServer(api.make_app()) as server, ClientSession() as session:
            async with session.post(server.make_url("/v1/models/m:predict"), data=b"{}") as response:
                return response.status, response.content_type, await response.read()
    status, content_type, body = asyncio.run(request())
    assert (status, content_type) == (500, "application/json")
    assert json.loads(body) == {"error": "RuntimeError: the core broke"}
