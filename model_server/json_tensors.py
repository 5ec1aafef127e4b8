"""TF Serving's REST JSON (util/json_tensor.cc) to and from numpy, read and written as rapidjson does.

Request: row (`instances`) or columnar (`inputs`) format, `{"b64": ...}` for binary
strings, `signature_name`; classify/regress `examples` and `context`. Bodies are read
with rapidjson 1.1.0's rules (kParseIterativeFlag | kParseNanAndInfFlag |
kParseStopWhenDoneFlag): NaN and Infinity tokens, no nesting limit, bytes after the
document ignored, no UTF-8 validation, its number conversion and its error messages.
Response: `predictions` / `outputs` / `results` / `error` as rapidjson's PrettyWriter
writes them, floats with TF Serving's WriteDecimal (six significant digits when they
round-trip, NaN / Infinity / -Infinity otherwise not written by JSON).

Strings are carried as the bytes rapidjson holds, decoded with 'surrogateescape', so
bytes that are not UTF-8 pass through unchanged.
"""

import base64
import binascii
import functools
import json
import math
import re

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import input_pb2

from model_server.status import ServingError, invalid_argument, unimplemented
from model_server.tensors import dtype_name

TEXT_ERRORS = "surrogateescape"
INT32_RANGE, UINT32_RANGE = (-(1 << 31), (1 << 31) - 1), (0, (1 << 32) - 1)
INT64_RANGE, UINT64_RANGE = (-(1 << 63), (1 << 63) - 1), (0, (1 << 64) - 1)


def _text(raw):
    return raw.decode("utf-8", TEXT_ERRORS)


def _raw(text):
    return text.encode("utf-8", TEXT_ERRORS)


class DuplicateKeyObject(dict):
    """A JSON object with a repeated key: lookups see the first member (rapidjson's FindMember)."""

    def __init__(self, pairs):
        super().__init__(reversed(pairs))
        self.pairs = pairs


def members(value):
    """An object's (key, value) members in document order, repeated keys included."""
    return value.pairs if isinstance(value, DuplicateKeyObject) else list(value.items())


def _object_from_pairs(pairs):
    if len({key for key, _ in pairs}) == len(pairs):
        return dict(pairs)
    return DuplicateKeyObject(pairs)


# --- reading: rapidjson's number conversion ---------------------------------------------

POW10 = [float(f"1e{n}") for n in range(309)]
MAX_FAST_SIGNIFICAND = (1 << 53) - 1
NUMBER_TOO_BIG, MISS_FRACTION, MISS_EXPONENT, VALUE_INVALID = (
    "Number too big to be stored in double.", "Miss fraction part in number.", "Miss exponent in number.",
    "Invalid value.")


class JsonParseError(Exception):
    """rapidjson's parse error: its English message and the byte offset it reports."""

    def __init__(self, message, offset):
        super().__init__(message)
        self.message, self.offset = message, offset


def _strtod_normal_precision(d, p):
    """rapidjson's StrtodNormalPrecision (reader without kParseFullPrecisionFlag)."""
    def fast_path(significand, exp):
        if exp < -308:
            return 0.0
        return significand * POW10[exp] if exp >= 0 else significand / POW10[-exp]
    if p < -308:
        return fast_path(fast_path(d, -308), p + 308)
    return fast_path(d, p)


def _digit(data, pos, n):
    return pos < n and 48 <= data[pos] <= 57


def parse_number(data, pos):
    """rapidjson's ParseNumber on `data` at `pos`: (int for integer tokens, float otherwise, end)."""
    n = len(data)
    start = pos
    minus = pos < n and data[pos] == 45
    pos += minus
    i = i64 = significand_digits = 0
    use_64bit = use_double = use_nan_or_inf = False
    d = 0.0
    c = data[pos] if pos < n else 0
    if c == 48:
        pos += 1
    elif 49 <= c <= 57:
        i = c - 48
        pos += 1
        limit, last = (214748364, 56) if minus else (429496729, 53)
        while _digit(data, pos, n):
            if i >= limit and (i != limit or data[pos] > last):
                i64, use_64bit = i, True
                break
            i = i * 10 + data[pos] - 48
            pos += 1
            significand_digits += 1
    elif c in (73, 78):  # 'I', 'N'
        use_nan_or_inf = True

        def consume(*chars):
            nonlocal pos
            for char in chars:
                if pos < n and data[pos] == char:
                    pos += 1
                else:
                    return False
            return True
        if consume(78, 97, 78):  # NaN
            d = math.nan
        elif consume(73, 110, 102):  # Inf
            d = -math.inf if minus else math.inf
            if pos < n and data[pos] == 105 and not consume(105, 110, 105, 116, 121):  # inity
                raise JsonParseError(VALUE_INVALID, pos)
        else:
            raise JsonParseError(VALUE_INVALID, pos)
    else:
        raise JsonParseError(VALUE_INVALID, pos)

    if use_64bit:
        limit, last = (0x0CCCCCCCCCCCCCCC, 56) if minus else (0x1999999999999999, 53)
        while _digit(data, pos, n):
            if i64 >= limit and (i64 != limit or data[pos] > last):
                d, use_double = float(i64), True
                break
            i64 = i64 * 10 + data[pos] - 48
            pos += 1
            significand_digits += 1
    if use_double:
        while _digit(data, pos, n):
            if d >= 1.7976931348623157e307:
                raise JsonParseError(NUMBER_TOO_BIG, start)
            d = d * 10 + (data[pos] - 48)
            pos += 1

    exp_frac = 0
    if pos < n and data[pos] == 46:  # '.'
        pos += 1
        if not _digit(data, pos, n):
            raise JsonParseError(MISS_FRACTION, pos)
        if not use_double:
            if not use_64bit:
                i64 = i
            while _digit(data, pos, n) and i64 <= MAX_FAST_SIGNIFICAND:
                i64 = i64 * 10 + data[pos] - 48
                pos += 1
                exp_frac -= 1
                if i64:
                    significand_digits += 1
            d, use_double = float(i64), True
        while _digit(data, pos, n):
            if significand_digits < 17:
                d = d * 10.0 + (data[pos] - 48)
                exp_frac -= 1
                if d > 0.0:
                    significand_digits += 1
            pos += 1

    exp = 0
    if pos < n and data[pos] in (101, 69):  # 'e', 'E'
        pos += 1
        if not use_double:
            d, use_double = float(i64 if use_64bit else i), True
        exp_minus = False
        if pos < n and data[pos] == 43:
            pos += 1
        elif pos < n and data[pos] == 45:
            pos += 1
            exp_minus = True
        if not _digit(data, pos, n):
            raise JsonParseError(MISS_EXPONENT, pos)
        exp = data[pos] - 48
        pos += 1
        if exp_minus:
            while _digit(data, pos, n):
                exp = exp * 10 + data[pos] - 48
                pos += 1
                if exp >= 214748364:
                    while _digit(data, pos, n):
                        pos += 1
            exp = -exp
        else:
            max_exp = 308 - exp_frac
            while _digit(data, pos, n):
                exp = exp * 10 + data[pos] - 48
                pos += 1
                if exp > max_exp:
                    raise JsonParseError(NUMBER_TOO_BIG, start)

    if use_double:
        d = _strtod_normal_precision(d, exp + exp_frac)
        return (-d if minus else d), pos
    if use_nan_or_inf:
        return d, pos
    value = i64 if use_64bit else i
    return (-value if minus else value), pos


FLOAT_LITERAL = re.compile(r"-?(\d+)(?:\.(\d+))?(?:[eE]([-+]?\d+))?")


def _double_from_literal(literal):
    """A float literal's value as rapidjson computes it (cheaply when that is the correctly rounded one)."""
    match = FLOAT_LITERAL.fullmatch(literal)
    integer, fraction, exponent = match.groups()
    fraction = fraction or ""
    significand = (integer + fraction).lstrip("0")
    if len(exponent or "") < 4:
        p = int(exponent or 0) - len(fraction)
        # Clinger's fast path: an exact significand times an exact power of ten, one rounding;
        # rapidjson's StrtodNormalPrecision computes exactly this.
        if len(significand) <= 15 and -22 <= p <= 22:
            return float(literal)
    value, _ = parse_number(literal.encode(), 0)
    return value


def _int_from_literal(literal):
    if len(literal) < 19:
        return int(literal)
    value, _ = parse_number(literal.encode(), 0)
    return value


# --- reading: documents -------------------------------------------------------------------

class _NeedsExactReader(Exception):
    """The C scanner cannot tell what rapidjson would make of this body."""


def _number_needs_exact_reader(literal):
    try:
        return _double_from_literal(literal)
    except JsonParseError:
        raise _NeedsExactReader from None


def _int_needs_exact_reader(literal):
    try:
        return _int_from_literal(literal)
    except JsonParseError:
        raise _NeedsExactReader from None


JSON_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
C_SCANNER = json.JSONDecoder(object_pairs_hook=_object_from_pairs, parse_float=_number_needs_exact_reader,
                             parse_int=_int_needs_exact_reader, parse_constant=JSON_CONSTANTS.__getitem__)
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _read_with_c_scanner(body):
    """Python's C JSON scanner where its answer is rapidjson's: raises when unsure."""
    if SURROGATE_ESCAPE.search(body):
        raise _NeedsExactReader  # rapidjson refuses lone high surrogates, keeps lone low ones
    text = _text(body)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if text[start:start + 1] not in ("{", "["):
        raise _NeedsExactReader  # a scalar document: where it ends, the C scanner and rapidjson differ
    try:
        value, _ = C_SCANNER.raw_decode(text, start)  # stops at the end of the document
    except (ValueError, RecursionError):
        raise _NeedsExactReader from None
    return value


# rapidjson's iterative parser: states and one-byte tokens.
(START, FINISH, OBJECT_INITIAL, MEMBER_KEY, KEY_VALUE_DELIMITER, MEMBER_VALUE, MEMBER_DELIMITER,
 ARRAY_INITIAL, ELEMENT, ELEMENT_DELIMITER) = range(10)
STATE_ERRORS = {
    START: "The document is empty.", OBJECT_INITIAL: "Missing a name for object member.",
    MEMBER_DELIMITER: "Missing a name for object member.", MEMBER_KEY: "Missing a colon after a name of object member.",
    MEMBER_VALUE: "Missing a comma or '}' after an object member.", KEY_VALUE_DELIMITER: VALUE_INVALID,
    ARRAY_INITIAL: VALUE_INVALID, ELEMENT_DELIMITER: VALUE_INVALID,
    ELEMENT: "Missing a comma or ']' after an array element.",
}
STRING_ESCAPES = {ord('"'): b'"', ord("/"): b"/", ord("\\"): b"\\", ord("b"): b"\b", ord("f"): b"\f",
                  ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}
UNESCAPED_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
WHITESPACE = frozenset(b" \t\n\r")


class _ExactReader:
    """rapidjson 1.1.0's IterativeParse over a MemoryStream, byte for byte, offsets included."""

    def __init__(self, data):
        self.data, self.n, self.pos = data, len(data), 0
        for bom_byte in (0xEF, 0xBB, 0xBF):  # EncodedInputStream<UTF8, MemoryStream> skips these
            if self.peek() == bom_byte:
                self.pos += 1

    def peek(self):
        return self.data[self.pos] if self.pos < self.n else 0

    def skip_whitespace(self):
        while self.pos < self.n and self.data[self.pos] in WHITESPACE:
            self.pos += 1

    def read(self):
        state, stack, root = START, [], None
        self.skip_whitespace()
        while self.peek():
            c = self.peek()
            if c in (0x5B, 0x7B):  # '[' '{'
                if state not in (START, KEY_VALUE_DELIMITER, ARRAY_INITIAL, ELEMENT_DELIMITER):
                    raise JsonParseError(STATE_ERRORS[state], self.pos)
                back = ELEMENT if state in (ARRAY_INITIAL, ELEMENT_DELIMITER) else (
                    MEMBER_VALUE if state == KEY_VALUE_DELIMITER else state)
                stack.append([back, [] if c == 0x5B else [], c == 0x5B])
                self.pos += 1
                state = ARRAY_INITIAL if c == 0x5B else OBJECT_INITIAL
            elif c in (0x5D, 0x7D):  # ']' '}'
                closes_array = c == 0x5D
                if closes_array and state not in (ARRAY_INITIAL, ELEMENT, ELEMENT_DELIMITER) or (
                        not closes_array and state not in (OBJECT_INITIAL, MEMBER_VALUE, MEMBER_DELIMITER)):
                    raise JsonParseError(STATE_ERRORS[state], self.pos)
                if state == ELEMENT_DELIMITER:
                    raise JsonParseError(VALUE_INVALID, self.pos)
                if state == MEMBER_DELIMITER:
                    raise JsonParseError(STATE_ERRORS[MEMBER_DELIMITER], self.pos)
                back, content, _ = stack.pop()
                value = content if closes_array else _object_from_pairs(content)
                self.pos += 1
                state = FINISH if back == START else back
                if state == FINISH:
                    root = value
                else:
                    self._attach(stack, value)
            elif c == 0x2C:  # ','
                if state not in (MEMBER_VALUE, ELEMENT):
                    raise JsonParseError(STATE_ERRORS[state], self.pos)
                self.pos += 1
                state = MEMBER_DELIMITER if state == MEMBER_VALUE else ELEMENT_DELIMITER
            elif c == 0x3A:  # ':'
                if state != MEMBER_KEY:
                    raise JsonParseError(STATE_ERRORS[state], self.pos)
                self.pos += 1
                state = KEY_VALUE_DELIMITER
            elif state in (OBJECT_INITIAL, MEMBER_DELIMITER):
                if c != 0x22:
                    raise JsonParseError(STATE_ERRORS[state], self.pos)
                stack[-1][1].append([self.read_string(), None])
                state = MEMBER_KEY
            elif state in (START, KEY_VALUE_DELIMITER, ARRAY_INITIAL, ELEMENT_DELIMITER):
                value = self.read_scalar()
                if state == START:
                    return value
                self._attach(stack, value)
                state = MEMBER_VALUE if state == KEY_VALUE_DELIMITER else ELEMENT
            else:
                raise JsonParseError(STATE_ERRORS[state], self.pos)
            if state == FINISH:
                return root  # kParseStopWhenDoneFlag: what follows the document is not read
            self.skip_whitespace()
        raise JsonParseError(STATE_ERRORS[state], self.pos)

    @staticmethod
    def _attach(stack, value):
        _, content, is_array = stack[-1]
        if is_array:
            content.append(value)
        else:
            content[-1][1] = value

    def read_scalar(self):
        c = self.peek()
        if c == 0x22:
            return self.read_string()
        for literal, value in ((b"null", None), (b"true", True), (b"false", False)):
            if c == literal[0]:
                self.pos += 1
                for expected in literal[1:]:
                    if self.peek() != expected:
                        raise JsonParseError(VALUE_INVALID, self.pos)
                    self.pos += 1
                return value
        value, self.pos = parse_number(self.data, self.pos)
        return value

    def read_string(self):
        """ParseStringToStream without encoding validation: bytes >= 0x20 are copied as they are."""
        data, out = self.data, bytearray()
        self.pos += 1
        while True:
            end = UNESCAPED_RUN.match(data, self.pos).end()
            out += data[self.pos:end]
            self.pos = end
            c = self.peek()
            if c == 0x5C:  # '\\'
                escape_offset = self.pos
                self.pos += 1
                e = self.peek()
                if e in STRING_ESCAPES:
                    out += STRING_ESCAPES[e]
                    self.pos += 1
                elif e == 0x75:  # 'u'
                    self.pos += 1
                    codepoint = self._hex4(escape_offset)
                    if 0xD800 <= codepoint <= 0xDBFF:
                        if self.peek() != 0x5C or not self._take() or self.peek() != 0x75 or not self._take():
                            raise JsonParseError("The surrogate pair in string is invalid.", escape_offset)
                        low = self._hex4(escape_offset)
                        if not 0xDC00 <= low <= 0xDFFF:
                            raise JsonParseError("The surrogate pair in string is invalid.", escape_offset)
                        codepoint = (((codepoint - 0xD800) << 10) | (low - 0xDC00)) + 0x10000
                    out += chr(codepoint).encode("utf-8", "surrogatepass")
                else:
                    raise JsonParseError("Invalid escape character in string.", escape_offset)
            elif c == 0x22:
                self.pos += 1
                return _text(bytes(out))
            elif c == 0:
                raise JsonParseError("Missing a closing quotation mark in string.", self.pos)
            else:
                raise JsonParseError("Invalid escape character in string.", self.pos)

    def _take(self):
        self.pos += 1
        return True

    def _hex4(self, escape_offset):
        codepoint = 0
        for _ in range(4):
            c = self.peek()
            if c not in HEX_DIGITS:
                raise JsonParseError("Incorrect hex digit after \\u escape in string.", escape_offset)
            codepoint = codepoint * 16 + int(chr(c), 16)
            self.pos += 1
        return codepoint


def read_json(body):
    """The JSON document in `body` as TF Serving's ParseJson reads it, or its 'JSON Parse error'."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        return _read_with_c_scanner(body)
    except _NeedsExactReader:
        pass
    try:
        return _ExactReader(body).read()
    except JsonParseError as error:
        raise invalid_argument(f"JSON Parse error: {error.message} at offset: {error.offset}") from None


# --- writing: rapidjson's PrettyWriter -----------------------------------------------------

INDENT = "    "
ESCAPED_CHARACTERS = re.compile('["\\\\\x00-\x1f]')
STRING_ESCAPE_TABLE = {**{c: f"\\u{c:04X}" for c in range(0x20)},
                       0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def json_string(text):
    """Writer::WriteString: quotes, backslashes and control characters escaped, the rest as is."""
    if ESCAPED_CHARACTERS.search(text):
        text = text.translate(STRING_ESCAPE_TABLE)
    return f'"{text}"'


def double_text(value):
    """Writer::Double (Grisu2 digits, Prettify layout) for a finite double."""
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    integer, _, fraction = mantissa.partition(".")
    digits = (integer + fraction).lstrip("0")
    k = int(exponent or 0) - len(fraction)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits, length = stripped, len(stripped)
    kk = length + k
    if 0 <= k and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = f"{digits[:kk]}.{digits[kk:]}"
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


class PrettyWriter:
    """rapidjson's PrettyWriter<StringBuffer>: 4-space indent, kFormatSingleLineArray when set.

    With `limit`, every event first checks the output is under `limit` bytes and fails
    otherwise, as TF Serving's JsonWriterWithLimit does for error messages.
    """

    def __init__(self, limit=None):
        self.parts, self.levels, self.single_line_arrays = [], [], False
        self.limit, self.size = limit, 0

    def text(self):
        return "".join(self.parts)

    def _put(self, text):
        self.parts.append(text)
        if self.limit is not None:
            self.size += len(_raw(text))

    def _in_limit(self):
        return self.limit is None or self.size < self.limit

    def _prefix(self):
        if not self.levels:
            return
        level = self.levels[-1]
        if level[0]:  # in an array
            if level[1]:
                self._put(", " if self.single_line_arrays else ",")
            if not self.single_line_arrays:
                self._put("\n" + INDENT * len(self.levels))
        else:
            self._put((",\n" if level[1] % 2 == 0 else ": ") if level[1] else "\n")
            if level[1] % 2 == 0:
                self._put(INDENT * len(self.levels))
        level[1] += 1

    def value(self, text):
        """A scalar already in JSON text (number, string, literal)."""
        if not self._in_limit():
            return False
        self._prefix()
        self._put(text)
        return True

    def double(self, value):
        if not self._in_limit():
            return False
        self._prefix()
        if not math.isfinite(value):
            return False  # Writer::WriteDouble without kWriteNanAndInfFlag
        self._put(double_text(value))
        return True

    def start(self, is_array):
        if not self._in_limit():
            return False
        self._prefix()
        self.levels.append([is_array, 0])
        self._put("[" if is_array else "{")
        return True

    def end(self):
        if not self._in_limit():
            return False
        is_array, count = self.levels.pop()
        if count and not (is_array and self.single_line_arrays):
            self._put("\n" + INDENT * len(self.levels))
        self._put("]" if is_array else "}")
        return True

    def leaf_array(self, texts):
        """start(True), value(t) for each text, end(), written at once."""
        self._prefix()
        if not texts:
            self._put("[]")
        elif self.single_line_arrays:
            self._put("[" + ", ".join(texts) + "]")
        else:
            inner = "\n" + INDENT * (len(self.levels) + 1)
            self._put("[" + inner + ("," + inner).join(texts) + "\n" + INDENT * len(self.levels) + "]")


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
        elif not _write_scalar(writer, value):
            break
    return writer.text()


def _write_scalar(writer, value):
    if value is None:
        return writer.value("null")
    if isinstance(value, bool):
        return writer.value("true" if value else "false")
    if isinstance(value, int):
        return writer.value(str(value))
    if isinstance(value, float):
        return writer.double(value)
    return writer.value(json_string(value))


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


def error_json(message):
    """MakeJsonFromStatus: {"error": message} as TF Serving writes it."""
    return _raw('{\n' + INDENT + '"error": ' + json_string(message) + "\n}")


# --- requests: tensors ----------------------------------------------------------------------

NUMPY_TYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
               types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
               types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_UINT32: np.uint32,
               types_pb2.DT_UINT64: np.uint64, types_pb2.DT_STRING: object}
# AddValueToTensor: which JSON numbers each integer type takes (rapidjson's IsInt, IsInt64, ...).
INTEGER_RANGES = {types_pb2.DT_INT32: INT32_RANGE, types_pb2.DT_INT16: INT32_RANGE, types_pb2.DT_INT8: INT32_RANGE,
                  types_pb2.DT_UINT8: INT32_RANGE, types_pb2.DT_INT64: INT64_RANGE,
                  types_pb2.DT_UINT32: UINT32_RANGE, types_pb2.DT_UINT64: UINT64_RANGE}
FLOATING = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


def is_b64_object(value):
    return isinstance(value, dict) and len(members(value)) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value):
    """JsonDecodeBase64Object (absl::Base64Unescape: padding optional, whitespace skipped)."""
    if not is_b64_object(value):
        raise format_error(value, "not formatted correctly for base64 data")
    text = re.sub(rb"[ \t\n\r\f\v]", b"", _raw(value["b64"]))
    stripped = text.rstrip(b"=")
    if len(text) - len(stripped) > 2 or (len(text) != len(stripped) and len(text) % 4) or len(stripped) % 4 == 1:
        raise invalid_argument("Unable to base64 decode")
    try:
        return base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
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
            return _raw(value)
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
        return [_raw(item) for item in items]
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


def _shape_text(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


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
        result[name] = tensor_array(values[name][:size], full_shape, input_infos[name].dtype)
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
        raise invalid_argument(f"Expecting shape {_shape_text(first)} but got: {_shape_text(shape)}")


def _tensor_from_value(value, dtype):
    shape = dense_shape(value)
    return tensor_array(fill_values(value, shape, dtype), shape, dtype)


def _from_inputs(value, input_infos):
    """FillTensorMapFromInputsMap: one tensor, or one per named input."""
    if not _is_named_object(value):
        if len(input_infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input "
                                   "tensors required as per tensorinfo_map")
        (key, info), = input_infos.items()
        return {key: _tensor_from_value(value, info.dtype)}
    result = {}
    for name, info in sorted(input_infos.items()):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        result[name] = _tensor_from_value(value[name], info.dtype)
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


# --- requests: the fast path for large float tensors ----------------------------------------

FAST_PATH_MIN_BYTES = 16 << 10
NON_STRUCTURAL_BYTES = bytes(c for c in range(256) if c not in b"[],")
# rapidjson's StrtodNormalPrecision is off the correctly rounded double by a few ulps at most;
# a float32 that every double this close rounds to is the one rapidjson's double rounds to.
ROUNDING_MARGIN = 2.0 ** -40


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

    simdjson parses the numbers straight into a buffer. It refuses what strict JSON refuses
    (NaN and Infinity tokens, bytes after the document, numbers beyond double's range), and
    anything unusual returns None: such requests take the exact reader above.
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
        if flat.size != int(np.prod(shape)) or not _dense_shape_of_numeric_json(body, shape):
            return None
    except (ValueError, TypeError, RuntimeError):
        return None
    return signature_name, "row" if key == "instances" else "columnar", flat.reshape(shape)


def _float32_as_rapidjson(values):
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
                tensor = _float32_as_rapidjson(values)
                if tensor is not None:
                    return signature_name, {key: tensor}, request_format
    document, signature_name = read_request_object(body)
    inputs, request_format = predict_inputs_from_json(document, signature_inputs(signature_name), signature_name)
    return signature_name, inputs, request_format


# --- responses ------------------------------------------------------------------------------

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


def decimal_texts(values):
    """WriteDecimal for a float32 or float64 array: six significant digits when they read back
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


def _output_texts(name, array):
    """AddSingleValueAndAdvance for every element: JSON texts, or b64 strings for '_bytes' outputs."""
    kind = array.dtype
    if kind.kind in "OS":
        flat = [v if isinstance(v, bytes) else bytes(v) for v in array.reshape(-1).tolist()]
        if name.endswith("_bytes"):
            return [base64.b64encode(v).decode() for v in flat], True
        return [json_string(_text(v)) for v in flat], False
    if kind == np.float32 or kind == np.float64:
        return decimal_texts(array), False
    if kind == np.bool_:
        return ["true" if v else "false" for v in array.reshape(-1).tolist()], False
    if kind in (np.int8, np.int16, np.int32, np.uint8, np.int64, np.uint32, np.uint64):
        return list(map(str, array.reshape(-1).tolist())), False
    import tensorflow as tf  # only for the type's name in this error
    raise invalid_argument(f"Failed to write JSON value for tensor type: "
                           f"{dtype_name(tf.dtypes.as_dtype(kind).as_datatype_enum)}")


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


def _tensor_text(writer, texts, is_b64, shape):
    """The text of one tensor (its values' `texts`, b64 ones unquoted) at the writer's position."""
    return _tensor_template(tuple(shape), len(writer.levels), writer.single_line_arrays, is_b64) % tuple(texts)


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
            # One output: the rows are the tensor's single-line text, but for the array's end,
            # written (as rapidjson does) once single-line arrays are off again.
            (texts, is_b64, shape), = columns.values()
            writer.single_line_arrays = True
            text = _tensor_text(writer, texts, is_b64, shape)
            writer.single_line_arrays = False
            writer.value(text[:-1] + "\n" + INDENT * len(writer.levels) + "]")
            writer.end()
            return _raw(writer.text())
        writer.start(True)
        for row in range(batch):
            if len(columns) > 1:
                writer.start(False)
            writer.single_line_arrays = True
            for name, (texts, is_b64, shape) in columns.items():
                if len(columns) > 1:
                    writer.value(json_string(name))
                size = math.prod(shape[1:])
                writer.value(_tensor_text(writer, texts[row * size:(row + 1) * size], is_b64, shape[1:]))
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
            writer.value(_tensor_text(writer, texts, is_b64, array.shape))
        if len(arrays) > 1:
            writer.end()
        writer.end()
    return _raw(writer.text())


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
        scores = decimal_texts(np.array([c.score for c in classifications.classes], dtype=np.float32))
        writer.start(True)
        for item, score in zip(classifications.classes, scores):
            writer.leaf_array([json_string(item.label), score])
        writer.end()
        writer.single_line_arrays = False
    writer.end()
    writer.end()
    return _raw(writer.text())


def regression_json(result):
    """MakeJsonFromRegressionResult: {"results": [value, ...]} on one line."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    writer = PrettyWriter()
    writer.start(False)
    writer.value('"results"')
    writer.single_line_arrays = True
    writer.leaf_array(decimal_texts(np.array([r.value for r in result.regressions], dtype=np.float32)))
    writer.end()
    return _raw(writer.text())


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
        feature.bytes_list.value.append(_raw(value))
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
