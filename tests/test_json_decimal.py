"""fast_paths.write_decimal_texts, vectorised, against WriteDecimal's rule applied one value at a time."""

import math

import numpy as np
import pytest

from model_server.rest_json.fast_paths import write_decimal_texts


def write_decimal(value, dtype):
    """TF Serving's WriteDecimal on one value: '%.6g' if it reads back, else full precision; '.0' on integers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%.6g" % value
    if dtype(float(text)) != dtype(value):
        text = "%.*g" % (9 if dtype == np.float32 else 17, value)
    return text if "." in text or "e" in text else text + ".0"


def float32_cases():
    rng = np.random.default_rng(7)
    every_pattern = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    pixels = rng.random(100_000, dtype=np.float32) / 2 + 2
    six_digit_decimals = (np.arange(200_000) / 1e5).astype(np.float32)
    edges = np.array([0, -0.0, 1, 1e6, 1e7, 999999.5, 9999995, 16777216, 3.4028235e38, 1e-45, 1e-5, 0.5, 2.5],
                     dtype=np.float32)
    return np.concatenate([every_pattern, pixels, six_digit_decimals, edges])


def float64_cases():
    rng = np.random.default_rng(8)
    spread = rng.random(5000) * 10.0 ** rng.integers(-300, 300, 5000)
    return np.concatenate([spread, np.round(spread[:1000] % 1e7), [0, -0.0, 1 / 3, 0.1, np.nan, -np.inf]])


@pytest.mark.parametrize("values", [float32_cases(), float64_cases()], ids=["float32", "float64"])
def test_every_value_is_written_as_write_decimal_writes_it_alone(values):
    assert write_decimal_texts(values) == [write_decimal(value, values.dtype.type) for value in values.tolist()]
