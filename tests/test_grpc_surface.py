"""The gRPC surface as TF Serving's clients see it: outputs in the typed fields, and no request,
however hostile, takes the server down, grows it past 2 GB or gets UNKNOWN."""

import random

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_management_pb2, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc, regression_pb2)

from model_server.contract import DEFAULT_MAX_GRPC_REQUEST_BYTES, DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS, server_options
from model_server.grpc_status_util import as_serving_error, serve_call
from model_server.model_service_impl import ModelService
from model_server.tensors import VALUE_FIELDS, tensor_to_proto, tensors_from_protos
from server_harness import copy_fixture, run_server_to_exit, running_server
from utils.runtime.processes import free_port

MAX_PEAK_RSS_BYTES = 2 << 30
TERABYTE_ELEMENTS = 1 << 40
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc_surface")
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp)
    with running_server(tmp, ["--model_name=hp", f"--model_base_path={base}"], wait_for=[("hp", [123])]) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server[2])


def predict_request(dtype=types_pb2.DT_FLOAT, dims=(1, 1), alias="x", signature="", **fields):
    """A PredictRequest for model hp whose one TensorProto is written field by field, as a hostile client may."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "hp", signature
    tensor = request.inputs[alias]
    tensor.dtype = dtype
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    for field, values in fields.items():
        if isinstance(values, bytes):
            setattr(tensor, field, values)
        else:
            getattr(tensor, field).extend(values)
    return request


def peak_rss_bytes(server):
    with open(f"/proc/{server[0].process.pid}/status") as status:
        peak_kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    return int(peak_kb) * 1024


def assert_still_serving(server, stub):
    """The server is alive, has never grown past 2 GB, and answers a good request right."""
    assert server[0].process.poll() is None
    assert peak_rss_bytes(server) < MAX_PEAK_RSS_BYTES
    response = stub.Predict(predict_request(dims=(3, 1), float_val=[1.0, 2.0, 5.0]), timeout=30)
    assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]


def grpc_status(call, request):
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=60)
    return raised.value.code(), raised.value.details()


# --- responses: Tensor::AsProtoField ------------------------------------------------------

def test_predict_answers_in_float_val_as_mnist_client_reads_it(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0], [5.0]], dtype=tf.float32))
    output = stub.Predict(request, timeout=30).outputs["y"]
    assert np.array(output.float_val).tolist() == [2.5, 3.0, 4.5]  # TF Serving's example/mnist_client.py
    assert output.dtype == types_pb2.DT_FLOAT and [d.size for d in output.tensor_shape.dim] == [3, 1]
    assert not output.tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(output), [[2.5], [3.0], [4.5]])


def _examples(message, values):
    for value in values:
        message.input.example_list.examples.add().features.feature["x"].float_list.value.append(value)


def test_classify_regress_and_multi_inference_of_several_examples(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "hp", "classify_x_to_y"
    _examples(request, [1.0, 2.0, 5.0])
    result = stub.Classify(request, timeout=30).result
    assert [c.classes[0].score for c in result.classifications] == [2.5, 3.0, 4.5]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "hp", "regress_x_to_y"
    _examples(request, [1.0, 2.0, 5.0])
    assert [r.value for r in stub.Regress(request, timeout=30).result.regressions] == [2.5, 3.0, 4.5]
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in [("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y", "tensorflow/serving/regress")]:
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = "hp", signature, method
    _examples(request, [1.0, 2.0, 5.0])
    results = stub.MultiInference(request, timeout=30).results
    assert [c.classes[0].score for c in results[0].classification_result.classifications] == [2.5, 3.0, 4.5]
    assert [r.value for r in results[1].regression_result.regressions] == [2.5, 3.0, 4.5]


def _sample(dtype_enum):
    dtype = np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)
    if dtype_enum == types_pb2.DT_STRING:
        return np.array([[b"a", b"bc", b""], [b"\xff", b"d", b"e"]], dtype=object)
    if dtype.names:  # quantized types: records of one integer
        array = np.zeros((2, 3), dtype)
        array[dtype.names[0]] = [[0, 1, 2], [2, 1, 0]]
        return array
    return np.array([[0, 1, 0], [1, 1, 0]] if dtype == bool else [[0, 1, 2], [2, 1, 0]]).astype(dtype)


@pytest.mark.parametrize("dtype_enum", sorted(VALUE_FIELDS), ids=lambda d: types_pb2.DataType.Name(d))
def test_every_dtype_is_written_in_its_typed_field_and_read_back(dtype_enum):
    array = _sample(dtype_enum)
    proto = tensor_to_proto(array, tensor_pb2.TensorProto())
    assert proto.dtype == dtype_enum and not proto.tensor_content
    assert len(getattr(proto, VALUE_FIELDS[dtype_enum])) == array.size * (2 if array.dtype.kind == "c" else 1)
    read_back = tensors_from_protos({"x": proto}, array.size)["x"]
    if array.dtype == object:  # DT_STRING: an object array's bytes are pointers, so compare the values
        assert (read_back.shape, read_back.tolist()) == (array.shape, array.tolist())
    else:
        assert read_back.tobytes() == array.tobytes()
    # For one element tf.make_tensor_proto writes the typed fields too: the same proto, byte for byte.
    one = array.ravel()[:1].reshape(())
    assert tensor_to_proto(one, tensor_pb2.TensorProto()).SerializeToString() == \
        tf.make_tensor_proto(one).SerializeToString()


@pytest.mark.parametrize("dtype_enum", sorted(set(VALUE_FIELDS) - {types_pb2.DT_STRING}),
                         ids=lambda d: types_pb2.DataType.Name(d))
def test_every_dtype_round_trips_through_tensor_content(dtype_enum):
    array = _sample(dtype_enum)
    proto = tensor_to_proto(array, tensor_pb2.TensorProto(), as_tensor_content=True)
    assert proto.tensor_content == array.tobytes() and not getattr(proto, VALUE_FIELDS[dtype_enum])
    assert tensors_from_protos({"x": proto}, array.size)["x"].tobytes() == array.tobytes()


def test_half_and_bfloat16_are_uint16_bit_patterns_in_half_val():
    assert list(tensor_to_proto(np.float16([1.5]), tensor_pb2.TensorProto()).half_val) == [0x3E00]
    bfloat16 = tf.bfloat16.as_numpy_dtype
    assert list(tensor_to_proto(np.array([1.5], bfloat16), tensor_pb2.TensorProto()).half_val) == [0x3FC0]


@pytest.fixture(scope="module")
def content_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc_surface_content")
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp)
    flags = ["--model_name=hp", f"--model_base_path={base}", "--enable_serialization_as_tensor_content",
             "--max_request_tensor_elements=1000"]
    with running_server(tmp, flags, wait_for=[("hp", [123])]) as running:
        yield prediction_service_pb2_grpc.PredictionServiceStub(running[2])


def test_serialization_as_tensor_content_flag(content_server):
    output = content_server.Predict(predict_request(dims=(3, 1), float_val=[1.0, 2.0, 5.0]), timeout=30).outputs["y"]
    assert output.tensor_content == np.float32([2.5, 3.0, 4.5]).tobytes() and not output.float_val
    np.testing.assert_array_equal(tf.make_ndarray(output), [[2.5], [3.0], [4.5]])


# --- requests: Tensor::FromProto's rules, within the bound ---------------------------------------

@pytest.mark.parametrize("dims, values, expected", [
    ((3, 1), [1.0], [2.5, 2.5, 2.5]),  # a short field is padded with its last value
    ((3, 1), [], [2.0, 2.0, 2.0]),  # an empty one gives zeros
    ((2, 1), [1.0, 2.0, 5.0], [2.5, 3.0]),  # values past the shape are ignored
    ((0, 1), [1.0], []),
])
def test_typed_field_is_read_as_tensorflow_reads_it(stub, dims, values, expected):
    response = stub.Predict(predict_request(dims=dims, float_val=values), timeout=30)
    assert list(response.outputs["y"].float_val) == expected


def test_padding_works_up_to_the_bound(content_server):
    response = content_server.Predict(predict_request(dims=(1000, 1), float_val=[1.0, 2.0]), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]).ravel(), [2.5] + [3.0] * 999)


def test_a_million_padded_elements_within_the_default_bound(stub):
    response = stub.Predict(predict_request(dims=(1 << 20, 1), float_val=[4.0]), timeout=60)
    assert len(response.outputs["y"].float_val) == 1 << 20 and set(response.outputs["y"].float_val) == {4.0}


def test_tensor_content_wins_over_the_typed_field(stub):
    request = predict_request(dims=(2, 1), tensor_content=np.float32([1.0, 5.0]).tobytes(), float_val=[7.0, 7.0, 7.0])
    assert list(stub.Predict(request, timeout=30).outputs["y"].float_val) == [2.5, 4.5]


def test_tensor_content_of_an_empty_tensor_is_ignored(stub):
    response = stub.Predict(predict_request(dims=(0, 1), tensor_content=b"\x01\x02\x03"), timeout=30)
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [0, 1]


def test_bound_is_the_flag(content_server):
    code, details = grpc_status(content_server.Predict, predict_request(dims=(1001, 1), float_val=[1.0]))
    assert (code, details) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "tensor parsing error: x: shape [1001,1] has 1001 elements, more than the 1000 this server accepts "
        "(--max_request_tensor_elements)")


def test_bound_holds_for_all_the_tensors_of_a_request(content_server):
    request = predict_request(dims=(600, 1), float_val=[1.0])
    request.inputs["y"].CopyFrom(request.inputs["x"])
    assert grpc_status(content_server.Predict, request) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Request tensors have 1200 elements in all, more than the 1000 this server accepts "
        "(--max_request_tensor_elements)")


# --- hostile requests --------------------------------------------------------------------------

def _too_many(dims):
    shape = ",".join(map(str, dims))
    elements = int(np.prod(dims, dtype=object))
    return (grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"tensor parsing error: x: shape [{shape}] has {elements} elements, more than the "
            f"{DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS} this server accepts (--max_request_tensor_elements)")


PARSING_ERROR = (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")
HOSTILE = {
    "a 1 TB claim": (predict_request(dims=[TERABYTE_ELEMENTS]), _too_many([TERABYTE_ELEMENTS])),
    "[1<<20, 1<<20] with one float": (predict_request(dims=[1 << 20, 1 << 20], float_val=[1.0]),
                                      _too_many([1 << 20, 1 << 20])),
    "[1<<20, 1<<20] with one string": (predict_request(types_pb2.DT_STRING, [1 << 20, 1 << 20], string_val=[b"a"]),
                                       _too_many([1 << 20, 1 << 20])),
    "DT_RESOURCE": (predict_request(types_pb2.DT_RESOURCE), PARSING_ERROR),
    "DT_VARIANT": (predict_request(types_pb2.DT_VARIANT), PARSING_ERROR),
    "DT_INVALID": (predict_request(types_pb2.DT_INVALID, float_val=[1.0]), PARSING_ERROR),
    "DT_FLOAT_REF": (predict_request(types_pb2.DT_FLOAT_REF, float_val=[1.0]), PARSING_ERROR),
    "an enum value past the last dtype": (predict_request(1000, float_val=[1.0]), PARSING_ERROR),
    "tensor_content too short": (predict_request(dims=[3, 1], tensor_content=b"\0" * 8), PARSING_ERROR),
    "tensor_content too long": (predict_request(dims=[1, 1], tensor_content=b"\0" * 8), PARSING_ERROR),
    "string tensor_content": (predict_request(types_pb2.DT_STRING, tensor_content=b"\x01a"), PARSING_ERROR),
    # TensorFlow would wrap the value around to 44; refused here.
    "an int_val past uint8's range": (predict_request(types_pb2.DT_UINT8, int_val=[300]), PARSING_ERROR),
    "a negative dim": (predict_request(dims=[-1, 1], float_val=[1.0]), PARSING_ERROR),
    "a negative dim after a zero": (predict_request(dims=[0, -5]), PARSING_ERROR),
    "a shape whose size overflows int64": (predict_request(dims=[1 << 62, 4, 0]), PARSING_ERROR),
    "255 dims": (predict_request(dims=[1] * 255), PARSING_ERROR),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_tensor_gets_a_clear_status(server, stub, name):
    request, expected = HOSTILE[name]
    assert grpc_status(stub.Predict, request) == expected
    assert_still_serving(server, stub)


def test_a_tensor_of_many_dims_is_parsed_and_reaches_the_model(stub):
    # TensorFlow allows 254 dims; numpy, which holds the tensor here, 64.
    output = stub.Predict(predict_request(dims=[1] * 64, float_val=[1.0]), timeout=30).outputs["y"]
    assert len(output.tensor_shape.dim) == 64 and list(output.float_val) == [2.5]


def test_bytes_that_are_not_a_predict_request(server, stub):
    raw_predict = server[2].unary_unary(PREDICT_METHOD, request_serializer=None, response_deserializer=None)
    # As C++ gRPC (hence TF Serving) answers a payload that does not parse: INTERNAL.
    assert grpc_status(raw_predict, b"\xff\xff\xff\xff not a proto") == (
        grpc.StatusCode.INTERNAL, "Exception deserializing request!")
    assert_still_serving(server, stub)
    log = server[0].log()
    assert "Exception deserializing message! Error parsing message with type 'tensorflow.serving.PredictRequest'" in log
    assert "Traceback" not in log


def test_a_message_past_the_limit_is_refused_by_grpc(server, stub):
    request = predict_request(dims=[DEFAULT_MAX_GRPC_REQUEST_BYTES // 4, 1],
                              tensor_content=bytes(DEFAULT_MAX_GRPC_REQUEST_BYTES))
    code, details = grpc_status(stub.Predict, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.endswith(f"Received message larger than max ({request.ByteSize()} vs. "
                            f"{DEFAULT_MAX_GRPC_REQUEST_BYTES})")
    assert_still_serving(server, stub)


def test_grpc_channel_arguments_raise_the_message_limit_as_in_tf_serving():
    assert dict(server_options())["grpc.max_receive_message_length"] == DEFAULT_MAX_GRPC_REQUEST_BYTES
    raised = dict(server_options([("grpc.max_receive_message_length", 1 << 30)]))
    assert raised["grpc.max_receive_message_length"] == 1 << 30 and raised["grpc.max_send_message_length"] == -1


def _random_tensor(rng):
    """Any dtype (a third DT_FLOAT, so that many reach the model), shape, field and content."""
    dtype = types_pb2.DT_FLOAT if rng.random() < 0.35 else rng.choice(list(VALUE_FIELDS) + [0, 20, 21, 101, 99, 1000])
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for _ in range(rng.choice([0, 1, 2, 2, 3, 4])):
        size = rng.choice([-1, 1 << 20, 1 << 40, 1 << 62]) if rng.random() < 0.1 else rng.randint(0, 4)
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_shape.unknown_rank = rng.random() < 0.05
    elements = int(np.prod([d.size for d in tensor.tensor_shape.dim], dtype=object))
    count = rng.randint(0, 6)
    kind = rng.choice(["content", "float", "float", "float", "int", "string", "half", "dcomplex", "bool", "uint64"])
    if kind == "content":
        exact = 0 <= elements * 4 <= 64 and rng.random() < 0.5
        tensor.tensor_content = rng.randbytes(elements * 4 if exact else rng.choice([1, 2, 4, 8, 12, 16, 24, 48]))
    elif kind == "float":
        tensor.float_val.extend(rng.uniform(-1e3, 1e3) for _ in range(count))
    elif kind == "int":
        tensor.int_val.extend(rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(count))
    elif kind == "string":
        tensor.string_val.extend(rng.randbytes(rng.randint(0, 8)) for _ in range(count))
    elif kind == "half":
        tensor.half_val.extend(rng.randint(0, 0xFFFF) for _ in range(count))
    elif kind == "dcomplex":
        tensor.dcomplex_val.extend(rng.uniform(-1, 1) for _ in range(count))
    elif kind == "bool":
        tensor.bool_val.extend(rng.random() < 0.5 for _ in range(count))
    else:
        tensor.uint64_val.extend(rng.randint(0, (1 << 64) - 1) for _ in range(count))
    return tensor


def test_fuzzed_tensor_protos_never_get_unknown_nor_kill_the_server(server, stub):
    rng = random.Random(20261125)
    codes = {}
    for _ in range(600):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hp"
        request.model_spec.signature_name = rng.choice(["", "serving_default", "classify_x_to_y",
                                                        "regress_x2_to_y3", "nope"])
        for _ in range(rng.choice([1, 1, 1, 2])):
            request.inputs[rng.choice(["x", "x", "inputs", "y"])].CopyFrom(_random_tensor(rng))
        try:
            stub.Predict(request, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.FAILED_PRECONDITION), (code, error.details(), request)
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(grpc.StatusCode.OK, 0) > 30 and codes.get(grpc.StatusCode.RESOURCE_EXHAUSTED, 0) > 10, codes
    assert_still_serving(server, stub)


# --- warmup records get the same checks ------------------------------------------------------------

def test_warmup_record_claiming_a_terabyte_fails_the_load_cleanly(tmp_path):
    base = copy_fixture("saved_model_half_plus_two_cpu", tmp_path)
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(predict_request(dims=[TERABYTE_ELEMENTS]))
    (base / "00000123" / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(base / "00000123" / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())
    code, output = run_server_to_exit(["--model_name=hp", f"--model_base_path={base}", f"--port={free_port()}"])
    assert code == 255, "a load that fails at start-up: TF Serving's 'Failed to start server', exit -1"
    assert _too_many([TERABYTE_ELEMENTS])[1] in output


# --- handlers: every exception a status ----------------------------------------------------------

class RecordingContext:
    def abort(self, code, details):
        self.status = (code, details)
        raise grpc.RpcError(details)


def _fails(*_):
    raise KeyError(20)


def test_an_unforeseen_exception_becomes_internal_not_unknown(caplog):
    context = RecordingContext()
    with pytest.raises(grpc.RpcError):
        serve_call(_fails, predict_pb2.PredictRequest(), predict_pb2.PredictResponse(), context, api="Predict")
    assert context.status == (grpc.StatusCode.INTERNAL, "Predict failed: KeyError: 20")
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [("Predict failed: KeyError: 20", None)]


def test_memory_error_becomes_resource_exhausted():
    error = as_serving_error(MemoryError(), "Predict")
    assert (error.code, error.message) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "Predict ran out of memory")


def test_an_unforeseen_exception_in_reload_config_is_an_internal_status():
    context = RecordingContext()
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()
    with pytest.raises(grpc.RpcError):  # TF Serving fails the call with the status (model_service_impl.cc)
        ModelService(None, _fails).HandleReloadConfigRequest(request, context)
    assert context.status == (grpc.StatusCode.INTERNAL, "HandleReloadConfigRequest failed: KeyError: 20")
