"""TF Serving's REST JSON formats (util/json_tensor.cc) to and from numpy.

Request: row (`instances`) or columnar (`inputs`) format, `{"b64": ...}` for
binary strings, `signature_name`; classify/regress `examples` and `context`.
Response: `predictions` / `outputs` / `results` shaped as TF Serving shapes them.
"""

import base64
import binascii

import numpy as np
import orjson
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import input_pb2

from model_server.status import ServingError, invalid_argument, unimplemented
from model_server.tensors import dtype_name

FLOAT_TYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_HALF: np.float16}
INT_TYPES = {types_pb2.DT_INT32: np.int32, types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
             types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT32: np.uint32,
             types_pb2.DT_UINT64: np.uint64}


def to_json_text(value):
    return orjson.dumps(value).decode()


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


def parse_json_object(body):
    """Parse a request body; TF Serving's errors for empty, malformed or non-object JSON."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {to_json_text(document)} Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument(f"JSON Value: {to_json_text(document)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return document, signature_name


def is_b64_object(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value):
    if not is_b64_object(value):
        raise invalid_argument(f"JSON Value: {to_json_text(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def dense_shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _scalar(value, dtype):
    """One JSON leaf as a Python value of TF type `dtype`, with TF Serving's type errors."""
    def type_error():
        return invalid_argument(f"JSON Value: {to_json_text(value)} Type: {json_type(value)} "
                                f"is not of expected type: {dtype_name(dtype)}")
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, dict):
            return decode_b64(value)
        if not isinstance(value, str):
            raise type_error()
        return value.encode()
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error()
    if dtype in FLOAT_TYPES:
        limit = float(np.finfo(FLOAT_TYPES[dtype]).max)
        if abs(value) > limit:
            raise invalid_argument(f"Cannot convert JSON value: {to_json_text(value)} to "
                                   f"{dtype_name(dtype)} without loss of precision.")
        return value
    if dtype in INT_TYPES:
        info = np.iinfo(INT_TYPES[dtype])
        if not isinstance(value, int) or not info.min <= value <= info.max:
            raise type_error()
        return value
    raise unimplemented(f"Conversion of JSON Value: {to_json_text(value)} to type: {dtype_name(dtype)}")


def _fill(value, shape, level, dtype, out):
    """Walk a dense JSON tensor as TF Serving's FillTensorProto does, appending leaves to `out`."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {to_json_text(value)} found at incorrect level: {level + 1} "
                                   f"in the JSON DOM. Expected at level: {rank}")
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                               f"expected size: {shape[level]}")
    for item in value:
        _fill(item, shape, level + 1, dtype, out)


def json_to_array(value, dtype):
    """A dense JSON value -> numpy array of TF type `dtype` (fast path for numeric tensors)."""
    if dtype in FLOAT_TYPES or dtype in INT_TYPES:
        try:
            array = np.asarray(value)
        except ValueError:  # ragged: let the exact walk report where
            array = None
        if array is not None and array.dtype.kind in ("f", "i", "u") and (
                dtype in FLOAT_TYPES or array.dtype.kind != "f"):
            target = FLOAT_TYPES.get(dtype) or INT_TYPES[dtype]
            if array.dtype.kind == "f" and array.size and np.abs(array).max() > np.finfo(target).max:
                array = None  # out of range: the exact walk names the value
            elif array.dtype.kind in "iu" and array.size and dtype in INT_TYPES and not (
                    np.iinfo(target).min <= array.min() and array.max() <= np.iinfo(target).max):
                array = None
            if array is not None:
                return array.astype(target, copy=False)
    shape = dense_shape(value)
    leaves = []
    _fill(value, shape, 0, dtype, leaves)
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    return np.array(leaves, dtype=FLOAT_TYPES.get(dtype) or INT_TYPES.get(dtype) or np.bool_).reshape(shape)


def _shape_text(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def _is_named_object(value):
    return isinstance(value, dict) and not is_b64_object(value)


def predict_inputs_from_json(document, input_infos):
    """({key: array}, format) from a predict body, given the signature's {key: TensorInfo}."""
    if not input_infos:
        raise invalid_argument(f"Failed to get input map for signature: "
                               f"{document.get('signature_name') or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise invalid_argument(f"JSON Value: {to_json_text(document)} Not formatted correctly expecting only "
                               "one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {to_json_text(document)} Excepting 'instances' to be an "
                                   "list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {to_json_text(document)} No values in 'instances' array")
        return _from_instances(instances, input_infos), "row"
    if has_inputs:
        return _from_inputs(document["inputs"], input_infos), "columnar"
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances, input_infos):
    if not isinstance(instances[0], dict) and len(input_infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map")
    if not _is_named_object(instances[0]):
        key = sorted(input_infos)[0]
        info = input_infos[key]
        for index, item in enumerate(instances):
            if _is_named_object(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
        try:
            array = json_to_array(instances, info.dtype)
        except ServingError as error:
            _check_items(instances, key, info, error)
        return {key: array}
    names = sorted(input_infos)
    columns = {name: [] for name in names}
    for index, item in enumerate(instances):
        if not _is_named_object(item):
            raise invalid_argument(f"Expecting object but got list at item {index} of input list")
        for name in item:
            if name not in input_infos:
                raise invalid_argument(f"Failed to process element: {index} key: {name} of 'instances' list. "
                                       f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {name}")
        if set(item) != set(names):
            raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                   f"{to_json_text(item)} keys must be equal to: {','.join(names)}")
        for name in names:
            columns[name].append(item[name])
    result = {}
    for name in names:
        try:
            result[name] = json_to_array(columns[name], input_infos[name].dtype)
        except ServingError as error:
            _check_items(columns[name], name, input_infos[name], error, named=True)
    return result


def _check_items(items, name, info, fallback_error, named=False):
    """Find the first inconsistent instance and raise TF Serving's message for it."""
    first_shape = None
    for index, item in enumerate(items):
        where = f"Failed to process element: {index}{' key: ' + name if named else ''} of 'instances' list."
        shape = dense_shape(item)
        try:
            leaves = []
            _fill(item, shape, 0, info.dtype, leaves)
        except ServingError as error:
            raise invalid_argument(f"{where} Error: INVALID_ARGUMENT: {error.message}") from None
        size = int(np.prod(shape)) if shape else 1
        if first_shape is None:
            first_shape, first_size = shape, size
        elif size != first_size:
            raise invalid_argument(f"{where} Error: INVALID_ARGUMENT: Expecting tensor size: {first_size} "
                                   f"but got: {size}")
        elif shape != first_shape:
            raise invalid_argument(f"{where} Error: INVALID_ARGUMENT: Expecting shape {_shape_text(first_shape)} "
                                   f"but got: {_shape_text(shape)}")
    raise fallback_error


def _from_inputs(value, input_infos):
    if not _is_named_object(value):
        if len(input_infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        (key, info), = input_infos.items()
        return {key: json_to_array(value, info.dtype)}
    result = {}
    for name, info in sorted(input_infos.items()):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        result[name] = json_to_array(value[name], info.dtype)
    return result


# --- responses -------------------------------------------------------------------

def _jsonable(name, array):
    """An output array as JSON-ready values (bytes as text, or as b64 for '_bytes' outputs)."""
    if array.dtype == object or array.dtype.kind == "S":
        as_b64 = name.endswith("_bytes")
        flat = [{"b64": base64.b64encode(v).decode()} if as_b64 else v.decode("utf-8", "replace")
                for v in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array


def predict_response_json(outputs, request_format):
    """{"predictions": ...} (row) or {"outputs": ...} (columnar), as TF Serving writes them."""
    if request_format == "row":
        batch = None
        for name, array in outputs.items():
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch is not None and array.shape[0] != batch:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                                       f"expecting: {batch}")
            batch = array.shape[0]
        if len(outputs) == 1:
            (name, array), = outputs.items()
            body = {"predictions": _jsonable(name, array)}
        else:
            columns = {name: _jsonable(name, array) for name, array in sorted(outputs.items())}
            body = {"predictions": [{name: columns[name][i] for name in columns} for i in range(batch)]}
    else:
        if len(outputs) == 1:
            (name, array), = outputs.items()
            body = {"outputs": _jsonable(name, array)}
        else:
            body = {"outputs": {name: _jsonable(name, array) for name, array in sorted(outputs.items())}}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


# --- classify and regress ----------------------------------------------------------

def _add_feature_value(value, name, feature):
    def kind_error():
        kind = feature.WhichOneof("kind")
        return invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                f"{ {'bytes_list': 'bytes', 'float_list': 'float', 'int64_list': 'int64'}[kind]}")

    def check(kind):
        if feature.WhichOneof("kind") not in (None, kind):
            raise kind_error()

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
        feature.bytes_list.value.append(value.encode())
    elif isinstance(value, float):
        check("float_list")
        feature.float_list.value.append(value)
    else:
        check("int64_list")
        if value > np.iinfo(np.int64).max:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)


def _example_from_json(value, example):
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)


def examples_input_from_json(document, method):
    """The Input proto of a classify/regress body (`examples`, optional `context`)."""
    input_proto = input_pb2.Input()
    examples = document.get("examples")
    if examples is None:
        raise invalid_argument(f"JSON Value: {to_json_text(document)} When method is {method}, key 'examples' "
                               "is expected and was not found")
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {to_json_text(document)} Expecting 'examples' value to be an "
                               "list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {to_json_text(document)} 'examples' value is an empty array")
    if "context" in document:
        _example_from_json(document["context"], input_proto.example_list_with_context.context)
        target = input_proto.example_list_with_context.examples
    else:
        target = input_proto.example_list.examples
    for value in examples:
        _example_from_json(value, target.add())
    return input_proto


def classification_json(result):
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = [[[c.label, np.float32(c.score)] for c in item.classes] for item in result.classifications]
    return orjson.dumps({"results": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


def regression_json(result):
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = np.array([r.value for r in result.regressions], dtype=np.float32)
    return orjson.dumps({"results": values}, option=orjson.OPT_SERIALIZE_NUMPY)


# --- fast path for large float tensors -------------------------------------------------

FAST_PATH_MIN_BYTES = 16 << 10


NON_STRUCTURAL_BYTES = bytes(c for c in range(256) if c not in b"[],")


def _dense_shape_of_numeric_json(text, shape):
    """True when the one JSON array in `text` (its other tokens hold no brackets) is dense of `shape`.

    A dense array's brackets and commas, with everything else deleted, form exactly one
    string per shape: `[[,,],[,,]]` for [2, 3]. Comparing with it checks every list's length.
    """
    if not shape or 0 in shape:
        return False
    structure = text.translate(None, NON_STRUCTURAL_BYTES)
    start, end = structure.find(b"["), structure.rfind(b"]")
    expected = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        expected = b"[" + b",".join([expected] * size) + b"]"
    return structure[start:end + 1] == expected


def fast_float_request(body):
    """(signature_name, 'row'|'columnar', float64 array) for a large purely numeric body, else None.

    simdjson parses the numbers straight into a buffer; anything unusual returns None and the
    request takes the exact path above, which reports TF Serving's errors.
    """
    import simdjson  # imported here: only REST predict needs it

    if len(body) < FAST_PATH_MIN_BYTES:
        return None
    try:
        document = simdjson.Parser().parse(body)
        if not isinstance(document, simdjson.Object):
            return None
        keys = set(document.keys())
        if not keys <= {"signature_name", "instances", "inputs"} or len(keys & {"instances", "inputs"}) != 1:
            return None
        signature_name = document.get("signature_name", "")
        key = "instances" if "instances" in keys else "inputs"
        value = document[key]
        # The shape check reads brackets in the raw body: the signature name must hold none.
        if not isinstance(signature_name, str) or set(signature_name) & set('[],"\\') or not isinstance(
                value, simdjson.Array):
            return None
        shape, element = [], value
        while isinstance(element, simdjson.Array):
            shape.append(len(element))
            if not len(element):
                return None
            element = element[0]
        flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
        if flat.size != int(np.prod(shape)) or not _dense_shape_of_numeric_json(body, shape):
            return None
    except (ValueError, TypeError, RuntimeError):
        return None
    return signature_name, "row" if key == "instances" else "columnar", flat.reshape(shape)


def predict_request_from_json(body, signature_inputs):
    """(signature_name, {key: array}, format) of a predict body, in TF Serving's order of checks.

    `signature_inputs(signature_name)` returns the signature's {key: TensorInfo} (it resolves the
    model, so JSON errors come before model errors, as in TF Serving). Large float tensors take
    the simdjson fast path; everything else, and every error, the exact path.
    """
    fast = fast_float_request(body)
    if fast is not None:
        signature_name, request_format, values = fast
        infos = signature_inputs(signature_name)
        if len(infos) == 1:
            (key, info), = infos.items()
            target = FLOAT_TYPES.get(info.dtype)
            if target is not None and np.abs(values).max() <= np.finfo(target).max:
                return signature_name, {key: values.astype(target)}, request_format
    document, signature_name = parse_json_object(body)
    inputs, request_format = predict_inputs_from_json(document, signature_inputs(signature_name))
    return signature_name, inputs, request_format
