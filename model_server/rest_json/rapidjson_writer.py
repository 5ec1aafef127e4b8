"""rapidjson 1.1.0's PrettyWriter<StringBuffer>, as TF Serving writes its REST bodies.

4-space indent, kFormatSingleLineArray when set; doubles as Writer::Double writes them
(shortest round-trip digits, Prettify layout). TF Serving's own float rule for tensors,
WriteDecimal, is `fast_paths.write_decimal_texts`.
"""

import math
import re

from model_server.rest_json.rapidjson_reader import encode_text

INDENT = "    "
ESCAPED_CHARACTERS = re.compile('["\\\\\x00-\x1f]')
STRING_ESCAPE_TABLE = {**{c: f"\\u{c:04X}" for c in range(0x20)},
                       0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def json_string(text):
    """Writer::WriteString: quotes, backslashes and control characters escaped, the rest as is."""
    if ESCAPED_CHARACTERS.search(text):
        text = text.translate(STRING_ESCAPE_TABLE)
    return f'"{text}"'


def shortest_double_text(value):
    """Writer::Double for a finite double: the shortest digits that read back (Grisu2), Prettify layout."""
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
            self.size += len(encode_text(text))

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
        self._put(shortest_double_text(value))
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


    def array_closed_on_its_own_line(self, elements):
        """start(True), the elements' single-line text, then end() written once kFormatSingleLineArray
        is cleared again: rapidjson then puts the closing bracket on its own line."""
        self._prefix()
        self._put("[" + elements + "\n" + INDENT * len(self.levels) + "]")

    def scalar(self, value):
        """A parsed JSON scalar: null, true, false, a number or a string."""
        if value is None:
            return self.value("null")
        if isinstance(value, bool):
            return self.value("true" if value else "false")
        if isinstance(value, int):
            return self.value(str(value))
        if isinstance(value, float):
            return self.double(value)
        return self.value(json_string(value))

    @property
    def depth(self):
        """How many arrays and objects are open."""
        return len(self.levels)
