"""Tensor types and TensorProtos, shared by the REST and gRPC surfaces.

A request's TensorProto is checked the way TensorFlow's `Tensor::FromProto` checks it
(shape, dtype, `tensor_content` length), and its element count is bounded, before
anything is allocated; only then does `tf.make_ndarray` build it. Responses are written
as `Tensor::AsProtoField` writes them (TF Serving's default) or, with
`--enable_serialization_as_tensor_content`, as `Tensor::AsProtoTensorContent`.
"""

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from model_server.status import ServingError, invalid_argument

MAX_DIMS = 254  # TensorShape::MaxDimensions()
INT64_MAX = (1 << 63) - 1
_CHUNK = 1 << 16  # values copied into a repeated field per step: no list of a whole large tensor

# The repeated field that carries each dtype's values (tensor.cc's ProtoHelper), for every dtype
# tf.make_ndarray can build. DT_RESOURCE, DT_VARIANT, the *_REF types and unknown enum values
# are not here: a request carrying them is refused.
VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_QINT8: "int_val",
    types_pb2.DT_QUINT8: "int_val",
    types_pb2.DT_QINT16: "int_val",
    types_pb2.DT_QUINT16: "int_val",
    types_pb2.DT_QINT32: "int_val",
    types_pb2.DT_INT4: "int_val",
    types_pb2.DT_UINT4: "int_val",
    types_pb2.DT_INT2: "int_val",
    types_pb2.DT_UINT2: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_FLOAT8_E5M2: "float8_val",
    types_pb2.DT_FLOAT8_E4M3FN: "float8_val",
    types_pb2.DT_FLOAT4_E2M1FN: "float8_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
_COMPLEX = {types_pb2.DT_COMPLEX64: np.float32, types_pb2.DT_COMPLEX128: np.float64}
# Repeated fields whose packed wire form is the values' little-endian bytes (fixed-width floats,
# and bools, one varint byte each): written by parsing those bytes, with no Python object per value.
_PACKED_AS_BYTES = {"float_val": np.dtype("<f4"), "scomplex_val": np.dtype("<f4"), "double_val": np.dtype("<f8"),
                    "dcomplex_val": np.dtype("<f8"), "bool_val": np.dtype(np.uint8)}
_FIELD_NUMBERS = {name: field.number for name, field in tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name.items()}


def dtype_name(dtype):
    """TensorFlow's DataTypeString: 'float', 'double', 'half', 'int32', 'string', ..."""
    return {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double", types_pb2.DT_HALF: "half"}.get(
        dtype, tf.dtypes.as_dtype(dtype).name)


def shape_text(shape):
    """TensorShape::DebugString: [2,3]."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def _parsing_error(alias):
    return invalid_argument(f"tensor parsing error: {alias}")


def element_count(proto, alias, max_elements, tensor_content):
    """The elements a request's TensorProto claims, checked as Tensor::FromProto checks it.

    INVALID_ARGUMENT "tensor parsing error: <alias>" (TF Serving's message) for a shape
    TensorShape::IsValid refuses, a dtype that cannot be built, or a `tensor_content` (the proto's,
    read once by the caller) whose length is not elements x dtype size; RESOURCE_EXHAUSTED past
    `max_elements`. Allocates nothing.
    """
    dims = proto.tensor_shape.dim
    if len(dims) > MAX_DIMS or proto.dtype not in VALUE_FIELDS:
        raise _parsing_error(alias)
    elements = 1
    for dim in dims:
        elements *= dim.size
        if dim.size < 0 or elements > INT64_MAX:
            raise _parsing_error(alias)
    if elements > max_elements:
        shape = ",".join(str(dim.size) for dim in dims)
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"tensor parsing error: {alias}: shape [{shape}] has {elements} elements, more than the "
                           f"{max_elements} this server accepts (--max_request_tensor_elements)")
    if tensor_content and elements:
        if proto.dtype == types_pb2.DT_STRING:  # TF's varint-prefixed string encoding: not read here
            raise _parsing_error(alias)
        if len(tensor_content) != elements * tf.dtypes.as_dtype(proto.dtype).size:
            raise _parsing_error(alias)
    return elements


def tensors_from_protos(protos, max_elements):
    """A request's {alias: TensorProto} -> {alias: numpy array}, read as Tensor::FromProto reads them.

    Every proto is checked (`element_count`) before any is built, and together they may claim at
    most `max_elements`. A typed field shorter than the shape is padded with its last value (by
    tf.make_ndarray); values past the shape's element count are ignored, and so is
    `tensor_content` when the shape has no elements, as in TensorFlow.
    """
    # Each read of a proto's bytes field copies it: `tensor_content` (an image is 602 KB) is read once.
    contents = {alias: proto.tensor_content for alias, proto in protos.items()}
    counts = {alias: element_count(proto, alias, max_elements, contents[alias]) for alias, proto in protos.items()}
    total = sum(counts.values())
    if total > max_elements:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Request tensors have {total} elements in all, more than the {max_elements} this server "
                           f"accepts (--max_request_tensor_elements)")
    return {alias: _build(proto, alias, counts[alias], contents[alias]) for alias, proto in protos.items()}


def _build(proto, alias, elements, tensor_content):
    """tf.make_ndarray, on what Tensor::FromProto reads: nothing when the shape has no elements,
    else `tensor_content` if set (read in place, as make_ndarray reads it but without its copy: the
    array is read-only, and the Session copies what it feeds), else the typed field's first
    `elements` values."""
    if tensor_content and elements:  # its length was checked against the shape
        return np.frombuffer(tensor_content, dtype=tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype).reshape(
            [dim.size for dim in proto.tensor_shape.dim])
    field = VALUE_FIELDS[proto.dtype]
    limit = elements * (2 if proto.dtype in _COMPLEX else 1)
    if not elements:
        proto = type(proto)(dtype=proto.dtype, tensor_shape=proto.tensor_shape)
    elif not proto.tensor_content and len(getattr(proto, field)) > limit:
        trimmed = type(proto)()
        trimmed.CopyFrom(proto)
        values = getattr(trimmed, field)
        if isinstance(values, bytes):
            setattr(trimmed, field, values[:limit])
        else:
            del values[limit:]
        proto = trimmed
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int_val past uint8's range, say,
        raise _parsing_error(alias) from None        # which TensorFlow would wrap around


def tensor_to_proto(array, proto, as_tensor_content=False):
    """Write `array` into TensorProto `proto` as TensorFlow's Tensor::AsProtoField does.

    Values go in the dtype's typed field (float_val, int_val, half_val as uint16 bit
    patterns, ...); with `as_tensor_content`, packed into `tensor_content` as
    Tensor::AsProtoTensorContent does (TF Serving's --enable_serialization_as_tensor_content).
    """
    array = np.asarray(array)
    dtype = tf.string if array.dtype.kind in "OSU" else tf.dtypes.as_dtype(array.dtype)
    proto.Clear()
    proto.dtype = dtype.as_datatype_enum
    proto.tensor_shape.SetInParent()  # a scalar still has its (empty) shape, as in TF
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if not array.size:
        return proto
    if dtype == tf.string:
        flat = [value.encode() if isinstance(value, str) else bytes(value) for value in array.ravel()]
        proto.string_val.extend(flat)
        return proto
    if as_tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
        return proto
    field = VALUE_FIELDS[proto.dtype]
    flat = array.ravel()
    if flat.dtype.names:  # quantized types are numpy records of one integer
        flat = flat[flat.dtype.names[0]]
    if field == "float8_val":
        proto.float8_val = flat.view(np.uint8).tobytes()
        return proto
    if field == "half_val":
        flat = flat.view(np.uint16)
    elif proto.dtype in _COMPLEX:
        flat = flat.view(_COMPLEX[proto.dtype])  # real and imaginary parts, interleaved
    elif field == "int_val":
        flat = flat.astype(np.int32)
    if field in _PACKED_AS_BYTES:  # the values' own buffer joined to the field's header: one copy
        values = np.ascontiguousarray(flat.astype(_PACKED_AS_BYTES[field], copy=False))
        proto.MergeFromString(b"".join((_varint((_FIELD_NUMBERS[field] << 3) | 2), _varint(values.nbytes),
                                        values.data)))
        return proto
    values = getattr(proto, field)
    for start in range(0, flat.size, _CHUNK):
        values.extend(flat[start:start + _CHUNK].tolist())
    return proto


def _varint(value):
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
