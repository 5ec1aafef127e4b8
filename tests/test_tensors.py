"""model_server.tensors.tensor_to_proto: typed fields written from packed bytes equal the per-value ones."""

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2

from model_server.tensors import tensor_to_proto

PACKED_CASES = {
    "float_val": np.array([[0.5, -0.0, np.nan], [np.inf, -np.inf, 1e-45]], dtype=np.float32),
    "double_val": np.array([1 / 3, -2.5e300, np.nan]),
    "bool_val": np.array([True, False, True]),
    "scomplex_val": np.array([1 + 2j, -3.5 - 0j], dtype=np.complex64),
    "dcomplex_val": np.array([1 / 3 + 2j]),
}


@pytest.mark.parametrize("field", PACKED_CASES)
def test_a_packed_field_holds_the_values_and_serializes_as_the_field_filled_value_by_value(field):
    array = PACKED_CASES[field]
    written = tensor_to_proto(array, tensor_pb2.TensorProto())
    expected = tensor_pb2.TensorProto(dtype=written.dtype, tensor_shape=written.tensor_shape)
    flat = array.ravel()
    getattr(expected, field).extend((flat.view(flat.real.dtype) if flat.dtype.kind == "c" else flat).tolist())
    assert written.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_a_large_float_tensor_fills_float_val_with_every_value():
    array = np.random.default_rng(0).random(150_528, dtype=np.float32)
    written = tensor_to_proto(array, tensor_pb2.TensorProto())
    assert np.array_equal(np.array(written.float_val, dtype=np.float32), array)
