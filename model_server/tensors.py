"""TensorFlow's names for tensor types, shared by the REST and gRPC surfaces."""

import tensorflow as tf
from tensorflow.core.framework import types_pb2


def dtype_name(dtype):
    """TensorFlow's DataTypeString: 'float', 'double', 'half', 'int32', 'string', ..."""
    return {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double", types_pb2.DT_HALF: "half"}.get(
        dtype, tf.dtypes.as_dtype(dtype).name)
