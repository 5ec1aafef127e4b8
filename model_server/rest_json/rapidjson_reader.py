"""rapidjson 1.1.0's reader, as TF Serving's ParseJson runs it (util/json_tensor.cc).

kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag: NaN and Infinity
tokens, no nesting limit, bytes after the document ignored, no UTF-8 validation, its
number conversion (StrtodNormalPrecision) and its error messages and offsets. Strings
are the bytes rapidjson holds, decoded with 'surrogateescape' (`decode_text`), so bytes
that are not UTF-8 pass through unchanged.
"""

import json
import math
import re

from model_server.status import invalid_argument

TEXT_ERRORS = "surrogateescape"


def decode_text(raw):
    """rapidjson's bytes as str, bytes that are not UTF-8 kept (surrogateescape)."""
    return raw.decode("utf-8", TEXT_ERRORS)


def encode_text(text):
    """The bytes `decode_text` read."""
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


# --- numbers: ParseNumber and StrtodNormalPrecision -----------------------------------------

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


# --- documents ------------------------------------------------------------------------------

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
    text = decode_text(body)
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
                return decode_text(bytes(out))
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
        return _read_exactly(body)


def _read_exactly(body):
    try:
        return _ExactReader(body).read()
    except JsonParseError as error:
        raise invalid_argument(f"JSON Parse error: {error.message} at offset: {error.offset}") from None

