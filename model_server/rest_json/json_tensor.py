"""TF Serving's REST JSON rules (util/json_tensor.cc), in its order: predict requests, classify and
regress requests, then responses. Reading and writing are rapidjson's (`rapidjson_reader`,
`rapidjson_writer`); large bodies take `fast_paths`, which give the same tensors and texts.

Request: row (`instances`) or columnar (`inputs`) format, `{"b64": ...}` for binary strings,
`signature_name`; classify/regress `examples` and `context`. Response: `predictions` /
`outputs` / `results` / `error`, floats with TF Serving's WriteDecimal.
"""

import base64
import binascii
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import input_pb2

from model_server.rest_json.fast_paths import (fast_float_request, float32_as_rapidjson, rows_text, tensor_text,
                                               write_decimal_texts)
from model_server.rest_json.rapidjson_reader import decode_text, encode_text, members, read_json
from model_server.rest_json.rapidjson_writer import INDENT, PrettyWriter, json_string
from model_server.status import ServingError, invalid_argument, unimplemented
from model_server.tensors import dtype_name, shape_text

INT32_RANGE, UINT32_RANGE = (-(1 << 31), (1 << 31) - 1), (0, (1 << 32) - 1)
INT64_RANGE, UINT64_RANGE = (-(1 << 63), (1 << 63) - 1), (0, (1 << 64) - 1)

NUMPY_TYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
               types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
               types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_UINT32: np.uint32,
               types_pb2.DT_UINT64: np.uint64, types_pb2.DT_STRING: object}
# AddValueToTensor: which JSON numbers each integer type takes (rapidjson's IsInt, IsInt64, ...).
INTEGER_RANGES = {types_pb2.DT_INT32: INT32_RANGE, types_pb2.DT_INT16: INT32_RANGE, types_pb2.DT_INT8: INT32_RANGE,
                  types_pb2.DT_UINT8: INT32_RANGE, types_pb2.DT_INT64: INT64_RANGE,
                  types_pb2.DT_UINT32: UINT32_RANGE, types_pb2.DT_UINT64: UINT64_RANGE}
FLOATING = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)
NUMPY_MAX_DIMS = 64  # numpy's NPY_MAXDIMS (numpy 2)


# --- JSON values in error messages ---------------------------------------------------------


def json_type(value):
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def format_error(value, text):
    return invalid_argument(f"JSON Value: {debug_string(value)} {text}")



def debug_string(value, limit=256):
    """JsonValueToDebugString: the value through a PrettyWriter, cut once past 256 bytes."""
    writer = PrettyWriter(limit)
    writer.single_line_arrays = True
    stack = [iter([(None, value)])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            if stack and not writer.end():
                break
            continue
        key, value = item
        if key is not None and not writer.value(json_string(key)):
            break
        if isinstance(value, dict):
            if not writer.start(False):
                break
            stack.append(iter(members(value)))
        elif isinstance(value, list):
            if not writer.start(True):
                break
            stack.append((None, element) for element in value)
        elif not writer.scalar(value):
            break
    return writer.text()


# --- predict requests ------------------------------------------------------------------------


def is_b64_object(value):
    return isinstance(value, dict) and len(members(value)) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value):
    """JsonDecodeBase64Object (absl::Base64Unescape: padding optional, whitespace skipped)."""
    if not is_b64_object(value):
        raise format_error(value, "not formatted correctly for base64 data")
    text = encode_text(value["b64"]).translate(None, b" \t\n\r\f\v")
    stripped = text.rstrip(b"=")
    if len(text) - len(stripped) > 2 or (len(text) != len(stripped) and len(text) % 4) or len(stripped) % 4 == 1:
        raise invalid_argument("Unable to base64 decode")
    try:  # strict: a byte outside the alphabet is an error, as base64.b64decode(validate=True) makes it
        return binascii.a2b_base64(stripped + b"=" * (-len(stripped) % 4), strict_mode=True)
    except binascii.Error:
        raise invalid_argument("Unable to base64 decode") from None


def _type_error(value, dtype):
    return invalid_argument(f"JSON Value: {debug_string(value)} Type: {json_type(value)} "
                            f"is not of expected type: {dtype_name(dtype)}")


def _leaf(value, dtype):
    """AddValueToTensor for one JSON leaf (objects: b64 for strings, a type error otherwise)."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return decode_b64(value)
        raise _type_error(value, dtype)
    kind = type(value)
    if dtype in FLOATING:
        if kind is float or kind is int:
            return value
    elif dtype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[dtype]
        if kind is int and low <= value <= high:
            return value
    elif dtype == types_pb2.DT_STRING:
        if kind is str:
            return encode_text(value)
    elif dtype == types_pb2.DT_BOOL:
        if kind is bool:
            return value
    else:
        raise unimplemented(f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_name(dtype)}")
    raise _type_error(value, dtype)


def _leaves(items, dtype):
    """The values of a list of leaves, checked in bulk where every item has the expected type."""
    kinds = set(map(type, items))
    if dtype in FLOATING and kinds <= {float, int}:
        return items
    if dtype in INTEGER_RANGES and kinds <= {int} and items:
        low, high = INTEGER_RANGES[dtype]
        if low <= min(items) and max(items) <= high:
            return items
    if dtype == types_pb2.DT_STRING and kinds <= {str}:
        return [encode_text(item) for item in items]
    if dtype == types_pb2.DT_BOOL and kinds <= {bool}:
        return items
    return None


def dense_shape(value):
    """GetDenseTensorShape: the sizes along the first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def fill_values(value, shape, dtype):
    """FillTensorProto: every leaf of a dense JSON tensor of `shape`, in order, with its errors."""
    rank = len(shape)
    if not isinstance(value, list):
        if rank:
            raise invalid_argument(f"JSON Value: {debug_string(value)} found at incorrect level: 1 in the JSON DOM. "
                                   f"Expected at level: {rank}")
        return [_leaf(value, dtype)]
    values = []
    stack = [(value, 0)]
    while stack:
        items, level = stack.pop()
        if not isinstance(items, list):
            raise invalid_argument(f"JSON Value: {debug_string(items)} found at incorrect level: {level + 1} "
                                   f"in the JSON DOM. Expected at level: {rank}")
        if level >= rank:
            raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(items) != shape[level]:
            raise invalid_argument(f"Encountered list at unexpected size: {len(items)} at level: {level} "
                                   f"expected size: {shape[level]}")
        if level < rank - 1:
            stack.extend((item, level + 1) for item in reversed(items))
            continue
        checked = _leaves(items, dtype)
        if checked is None:
            checked = []
            for item in items:
                if isinstance(item, list):
                    raise invalid_argument(f"Encountered list at unexpected level: {rank} expected < {rank}")
                checked.append(_leaf(item, dtype))
        values.extend(checked)
    return values


def build_tensor(name, values, shape, dtype):
    """The tensor of input `name`, or Tensor::FromProto's "tensor parsing error: <name>" where
    numpy cannot hold it: more than 64 dimensions (TensorFlow allows 254, TensorShape's
    kMaxDimensions, and TF Serving answers that past them; this server's gRPC front end answers
    it past 64 too), or a dtype without a numpy type. A dtype no JSON value converts to (half,
    complex, ...: AddValueToTensor is UNIMPLEMENTED for them) still makes a tensor of no values."""
    if len(shape) > NUMPY_MAX_DIMS:
        raise invalid_argument(f"tensor parsing error: {name}")
    if dtype not in NUMPY_TYPES:  # `values` is empty: any value would have been refused
        try:
            return np.zeros(shape, tf.dtypes.as_dtype(dtype).as_numpy_dtype)
        except (TypeError, KeyError):  # resource, variant, an unknown enum value
            raise invalid_argument(f"tensor parsing error: {name}") from None
    return tensor_array(values, shape, dtype)


def tensor_array(values, shape, dtype):
    """The tensor TF Serving builds from these values (integers narrowed as static_cast does)."""
    target = NUMPY_TYPES[dtype]
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in FLOATING:
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float64).astype(target).reshape(shape)
    if dtype == types_pb2.DT_BOOL:
        return np.array(values, dtype=np.bool_).reshape(shape)
    wide = np.uint64 if dtype == types_pb2.DT_UINT64 else np.int64
    return np.array(values, dtype=wide).astype(target).reshape(shape)

def _is_named_object(value):
    return isinstance(value, dict) and not is_b64_object(value)


def predict_inputs_from_json(document, input_infos, signature_name):
    """({key: array}, 'row'|'columnar') from a predict body, given the signature's {key: TensorInfo}."""
    if not input_infos:
        raise invalid_argument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances:
        if has_inputs:
            raise format_error(document, "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                                         "keys to exist ")
        instances = document["instances"]
        if not isinstance(instances, list):
            raise format_error(document, "Expecting 'instances' to be an list/array")
        if not instances:
            raise format_error(document, "No values in 'instances' array")
        return _from_instances(instances, input_infos), "row"
    if has_inputs:
        return _from_inputs(document["inputs"], input_infos), "columnar"
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _element_error(index, name, error):
    where = f"Failed to process element: {index}{' key: ' + name if name is not None else ''} of 'instances' list."
    return invalid_argument(f"{where} Error: {error.code.name}: {error.message}")


def _from_instances(instances, input_infos):
    """FillTensorMapFromInstancesList: element by element, each checked against the first."""
    if not isinstance(instances[0], dict) and len(input_infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")
    named = _is_named_object(instances[0])
    names = sorted(input_infos)
    values, shapes = {}, {}
    for index, item in enumerate(instances):
        if named:
            if not _is_named_object(item):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, content in members(item):
                try:
                    _add_instance_item(content, name, input_infos, values, shapes)
                except ServingError as error:
                    raise _element_error(index, name, error) from None
            if set(item) != set(names):
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{debug_string(item)} keys must be equal to: {','.join(names)}")
        else:
            if _is_named_object(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(item, names[0], input_infos, values, shapes)
            except ServingError as error:
                raise _element_error(index, None, error) from None
    result = {}
    for name, shape in shapes.items():
        full_shape = [len(instances), *shape]
        size = int(np.prod(full_shape))
        result[name] = build_tensor(name, values[name][:size], full_shape, input_infos[name].dtype)
    return result


def _add_instance_item(item, name, input_infos, values, shapes):
    """AddInstanceItem: one element's tensor, its size and shape equal to the first element's."""
    if name not in input_infos:
        raise invalid_argument(f"JSON object: does not have named input: {name}")
    shape = dense_shape(item)
    leaves = fill_values(item, shape, input_infos[name].dtype)
    values.setdefault(name, []).extend(leaves)
    if name not in shapes:
        shapes[name] = shape
        return
    first = shapes[name]
    first_size = int(np.prod(first))
    if len(leaves) != first_size:
        raise invalid_argument(f"Expecting tensor size: {first_size} but got: {len(leaves)}")
    if shape != first:
        raise invalid_argument(f"Expecting shape {shape_text(first)} but got: {shape_text(shape)}")


def _from_inputs(value, input_infos):
    """FillTensorMapFromInputsMap: one tensor, or one per named input; every JSON error before the
    tensors are built, as TF Serving fills protos first."""
    if not _is_named_object(value):
        if len(input_infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        (key, info), = input_infos.items()
        values = {key: value}
    else:
        values = {}
        for name in sorted(input_infos):
            if name not in value:
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
            values[name] = value[name]
    filled = {}
    for name, item in values.items():
        shape = dense_shape(item)
        filled[name] = shape, fill_values(item, shape, input_infos[name].dtype)
    result = {}
    for name, (shape, leaves) in filled.items():
        result[name] = build_tensor(name, leaves, shape, input_infos[name].dtype)
    return result


def read_request_object(body):
    """ParseJson and FillSignature: (document, signature_name) of a request body."""
    document = read_json(body)
    if not isinstance(document, dict):
        raise format_error(document, "Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise format_error(document, "not formatted correctly. 'signature_name' key must be a string value.")
    return document, signature_name


def predict_request_from_json(body, signature_inputs):
    """(signature_name, {key: array}, format) of a predict body, in TF Serving's order of checks.

    `signature_inputs(signature_name)` returns the signature's {key: TensorInfo} (it resolves the
    model, so JSON errors come before model errors, as in TF Serving). Large float32 tensors
    take the simdjson fast path when it gives the exact reader's tensor; everything else, and
    every error, the exact reader.
    """
    fast = fast_float_request(body)
    if fast is not None:
        signature_name, request_format, values = fast
        infos = signature_inputs(signature_name)
        if len(infos) == 1:
            (key, info), = infos.items()
            if info.dtype == types_pb2.DT_FLOAT:
                tensor = float32_as_rapidjson(values)
                if tensor is not None:
                    return signature_name, {key: tensor}, request_format
    document, signature_name = read_request_object(body)
    inputs, request_format = predict_inputs_from_json(document, signature_inputs(signature_name), signature_name)
    return signature_name, inputs, request_format


# --- classify and regress requests ----------------------------------------------------------

FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _add_feature_value(value, name, feature):
    """AddValueToFeature: one JSON value into a tf.train.Feature, its kind fixed by the first."""
    def check(kind):
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                   f"{FEATURE_KIND_NAMES[current]}")

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64_object(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        check("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        check("bytes_list")
        feature.bytes_list.value.append(decode_b64(value))
    elif isinstance(value, str):
        check("bytes_list")
        feature.bytes_list.value.append(encode_text(value))
    elif isinstance(value, float):
        check("float_list")
        with np.errstate(over="ignore"):
            feature.float_list.value.append(float(np.float32(value)))
    else:
        check("int64_list")
        if value > INT64_RANGE[1]:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)


def _example_from_json(value, example):
    """MakeExampleFromJsonObject: a repeated feature name keeps its last value."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in members(value):
        feature = example.features.feature[name]
        feature.Clear()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)


def examples_input_from_json(document):
    """The Input proto of a classify/regress body: `context` first, then `examples`."""
    input_proto = input_pb2.Input()
    has_context = "context" in document
    if has_context:
        _example_from_json(document["context"], input_proto.example_list_with_context.context)
    examples = document.get("examples")
    if "examples" not in document:
        raise format_error(document, "When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise format_error(document, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(document, "'examples' value is an empty array")
    target = input_proto.example_list_with_context.examples if has_context else input_proto.example_list.examples
    for value in examples:
        _example_from_json(value, target.add())
    return input_proto


# --- responses ------------------------------------------------------------------------------


def _output_texts(name, array):
    """AddSingleValueAndAdvance for every element: JSON texts, or b64 strings for '_bytes' outputs."""
    kind = array.dtype
    if kind.kind in "OS":
        flat = [v if isinstance(v, bytes) else bytes(v) for v in array.reshape(-1).tolist()]
        if name.endswith("_bytes"):
            return [base64.b64encode(v).decode() for v in flat], True
        return [json_string(decode_text(v)) for v in flat], False
    if kind == np.float32 or kind == np.float64:
        return write_decimal_texts(array), False
    if kind == np.bool_:
        return ["true" if v else "false" for v in array.reshape(-1).tolist()], False
    if kind in (np.int8, np.int16, np.int32, np.uint8, np.int64, np.uint32, np.uint64):
        return list(map(str, array.reshape(-1).tolist())), False
    raise invalid_argument(f"Failed to write JSON value for tensor type: "
                           f"{dtype_name(tf.dtypes.as_dtype(kind).as_datatype_enum)}")


def predict_response_json(outputs, request_format):
    """MakeJsonFromTensors: {"predictions": ...} (row) or {"outputs": ...} (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(value) for name, value in sorted(outputs.items())}
    writer = PrettyWriter()
    if request_format == "row":
        batch = None
        for name, array in arrays.items():
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch is not None and array.shape[0] != batch:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                                       f"expecting: {batch}")
            batch = array.shape[0]
        columns = {name: (*_output_texts(name, array), array.shape) for name, array in arrays.items()}
        writer.start(False)
        writer.value('"predictions"')
        if len(columns) == 1 and batch:
            # One output: every row on one line, the array closed once single-line arrays are off.
            (texts, is_b64, shape), = columns.values()
            writer.array_closed_on_its_own_line(rows_text(writer, texts, is_b64, shape))
            writer.end()
            return encode_text(writer.text())
        writer.start(True)
        for row in range(batch):
            if len(columns) > 1:
                writer.start(False)
            writer.single_line_arrays = True
            for name, (texts, is_b64, shape) in columns.items():
                if len(columns) > 1:
                    writer.value(json_string(name))
                size = math.prod(shape[1:])
                writer.value(tensor_text(writer, texts[row * size:(row + 1) * size], is_b64, shape[1:]))
            writer.single_line_arrays = False
            if len(columns) > 1:
                writer.end()
        writer.end()
        writer.end()
    else:
        writer.start(False)
        writer.value('"outputs"')
        if len(arrays) > 1:
            writer.start(False)
        for name, array in arrays.items():
            if len(arrays) > 1:
                writer.value(json_string(name))
            texts, is_b64 = _output_texts(name, array)
            writer.value(tensor_text(writer, texts, is_b64, array.shape))
        if len(arrays) > 1:
            writer.end()
        writer.end()
    return encode_text(writer.text())


def classification_json(result):
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    writer = PrettyWriter()
    writer.start(False)
    writer.value('"results"')
    writer.start(True)
    for classifications in result.classifications:
        writer.single_line_arrays = True
        scores = write_decimal_texts(np.array([c.score for c in classifications.classes], dtype=np.float32))
        writer.start(True)
        for item, score in zip(classifications.classes, scores):
            writer.leaf_array([json_string(item.label), score])
        writer.end()
        writer.single_line_arrays = False
    writer.end()
    writer.end()
    return encode_text(writer.text())


def regression_json(result):
    """MakeJsonFromRegressionResult: {"results": [value, ...]} on one line."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    writer = PrettyWriter()
    writer.start(False)
    writer.value('"results"')
    writer.single_line_arrays = True
    writer.leaf_array(write_decimal_texts(np.array([r.value for r in result.regressions], dtype=np.float32)))
    writer.end()
    return encode_text(writer.text())



def error_json(message):
    """MakeJsonFromStatus: {"error": message} as TF Serving writes it."""
    return encode_text('{\n' + INDENT + '"error": ' + json_string(message) + "\n}")
