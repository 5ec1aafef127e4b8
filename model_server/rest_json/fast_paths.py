"""Fast paths for REST bodies, each giving exactly what the slower rule gives.

- Requests: large purely numeric bodies parsed by simdjson straight into a float64 buffer,
  used when the float32 tensor is provably the one rapidjson's doubles give.
- Responses: TF Serving's WriteDecimal computed in numpy for whole float arrays, and each
  tensor's PrettyWriter text built once per shape as a template filled with `%`.
"""

import functools
import math

import numpy as np

from model_server.rest_json.rapidjson_writer import INDENT

# --- requests: simdjson for large float tensors ------------------------------------------------

FAST_PATH_MIN_BYTES = 16 << 10
NON_STRUCTURAL_BYTES = bytes(c for c in range(256) if c not in b"[],")
# rapidjson's StrtodNormalPrecision is off the correctly rounded double by a few ulps at most;
# a float32 that every double this close rounds to is the one rapidjson's double rounds to.
ROUNDING_MARGIN = 2.0 ** -40


def dense_shape_of_numeric_json(text, shape):
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

    simdjson parses the numbers straight into a buffer. It refuses what strict JSON refuses
    (NaN and Infinity tokens, bytes after the document, numbers beyond double's range), and
    anything unusual returns None: such requests take the exact reader (rapidjson_reader).
    """
    import simdjson  # imported here: only REST predict needs it

    if len(body) < FAST_PATH_MIN_BYTES:
        return None
    try:
        document = simdjson.Parser().parse(body)
        if not isinstance(document, simdjson.Object):
            return None
        keys = list(document.keys())
        if len(set(keys)) != len(keys) or not set(keys) <= {"signature_name", "instances", "inputs"} or len(
                set(keys) & {"instances", "inputs"}) != 1:
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
        if flat.size != int(np.prod(shape)) or not dense_shape_of_numeric_json(body, shape):
            return None
    except (ValueError, TypeError, RuntimeError):
        return None
    return signature_name, "row" if key == "instances" else "columnar", flat.reshape(shape)


def float32_as_rapidjson(values):
    """The float32 tensor rapidjson's doubles give, or None where a few ulps could change it."""
    with np.errstate(over="ignore"):
        result = values.astype(np.float32)
        if np.array_equal(result, values):
            return result  # float32 values exactly: the nearest float32s are far more than a few ulps away
        margin = np.abs(values) * ROUNDING_MARGIN
        if not (np.array_equal((values - margin).astype(np.float32), result)
                and np.array_equal((values + margin).astype(np.float32), result)):
            return None
    return result


# --- responses: WriteDecimal in numpy -------------------------------------------------------------

# WriteDecimal's two precisions: digits10 first, max_digits10 when those do not read back.
SHORT_FORMAT = "%.6g"
FULL_FORMATS = {np.dtype(np.float32): "%.9g", np.dtype(np.float64): "%.17g"}
# A scaled value this close to a rounding tie, or a decimal this close to a float32 rounding
# midpoint, is decided by formatting and reading back: float64 arithmetic is too coarse there.
TIE_MARGIN = 1e-6
MIDPOINT_MARGIN = 1e-12


def _reads_back_in_six_digits(flat):
    """(decided, six) for a float32 array: where `decided`, `six` says whether '%.6g' reads back.

    The six-digit decimal is computed in float64 (the value scaled by a power of ten, rounded);
    elements near a rounding tie or near a float32 rounding midpoint are left undecided.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        values = flat.astype(np.float64)
        magnitude = np.abs(values)
        exponent = np.floor(np.log10(magnitude))
        exponent += magnitude >= 10.0 ** (exponent + 1)
        exponent -= magnitude < 10.0 ** exponent
        scale = 10.0 ** (5 - exponent)
        scaled = values * scale
        rounded = np.rint(scaled)
        decimal = rounded / scale
        six = decimal.astype(np.float32) == flat
        below = np.nextafter(flat, np.float32(-np.inf)).astype(np.float64)
        above = np.nextafter(flat, np.float32(np.inf)).astype(np.float64)
        near_midpoint = ((np.abs(decimal - (values + below) / 2) <= magnitude * MIDPOINT_MARGIN)
                         | (np.abs(decimal - (values + above) / 2) <= magnitude * MIDPOINT_MARGIN))
        far_from_tie = np.abs(scaled - np.floor(scaled) - 0.5) > TIE_MARGIN
        decided = np.isfinite(scaled) & (magnitude > 0) & far_from_tie & ~near_midpoint
    return decided, six


def write_decimal_texts(values):
    """TF Serving's WriteDecimal for a float32 or float64 array: six significant digits when they read back
    as the same value, full precision otherwise; '.0' on whole numbers; NaN and ±Infinity."""
    flat = values.reshape(-1)
    full_format = FULL_FORMATS[flat.dtype]
    finite = np.isfinite(flat)
    if flat.dtype == np.float32:
        decided, six = _reads_back_in_six_digits(flat)
    else:
        decided = six = np.zeros(flat.shape, dtype=bool)
    texts = np.empty(flat.shape, dtype=object)
    short, full = decided & six, decided & ~six
    texts[short] = list(map(SHORT_FORMAT.__mod__, flat[short].tolist()))
    texts[full] = list(map(full_format.__mod__, flat[full].tolist()))
    undecided = np.flatnonzero(~decided & finite)
    for index, number in zip(undecided.tolist(), flat[undecided].tolist()):
        text = SHORT_FORMAT % number
        if flat.dtype.type(float(text)) != flat[index]:
            text = full_format % number
        texts[index] = text
    with np.errstate(invalid="ignore"):
        whole = np.flatnonzero(finite & (np.floor(flat) == flat))
    texts[whole] = [text if "." in text or "e" in text else text + ".0" for text in texts[whole].tolist()]
    for index, number in zip(np.flatnonzero(~finite).tolist(), flat[~finite].tolist()):
        texts[index] = "NaN" if math.isnan(number) else ("-Infinity" if number < 0 else "Infinity")
    return texts.tolist()


# --- responses: per-shape templates ---------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _tensor_template(shape, depth, single_line, is_b64):
    """The PrettyWriter text of a tensor of `shape` written with `depth` levels open, '%s' for
    each value: what AddTensorValues writes, built once per shape and filled with `%`."""
    if not shape:
        return '{\n' + INDENT * (depth + 1) + '"b64": "%s"\n' + INDENT * depth + '}' if is_b64 else "%s"
    if not shape[0]:
        return "[]"
    inner = _tensor_template(shape[1:], depth + 1, single_line, is_b64)
    if single_line:
        return "[" + ", ".join([inner] * shape[0]) + "]"
    indent = "\n" + INDENT * (depth + 1)
    return "[" + indent + ("," + indent).join([inner] * shape[0]) + "\n" + INDENT * depth + "]"


@functools.lru_cache(maxsize=16)
def _rows_template(shape, depth, is_b64):
    """The elements of a single-line array of `shape` written with `depth` levels open, '%s' for each value."""
    return ", ".join([_tensor_template(shape[1:], depth + 1, True, is_b64)] * shape[0])


def tensor_text(writer, texts, is_b64, shape):
    """The text of one tensor (its values' `texts`, b64 ones unquoted) at the writer's position."""
    return _tensor_template(tuple(shape), writer.depth, writer.single_line_arrays, is_b64) % tuple(texts)


def rows_text(writer, texts, is_b64, shape):
    """The elements' text of a tensor written as a single-line array at the writer's position."""
    return _rows_template(tuple(shape), writer.depth, is_b64) % tuple(texts)
