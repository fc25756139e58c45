"""A compiled scanner that turns flat JSON objects straight into columns.

Decoding a micro-batch of JSON records with msgspec builds one Python object
per record and one per value, and gathering those into numpy columns then
costs more than the parse itself. For the common case this scanner writes
the columns directly: numbers into a float64 matrix, text as byte spans of
the batch's buffer that become one Python string per distinct value.

It never guesses. The common case is: one flat object per value, field names
and text in printable ASCII without escapes, integers of at most 18 digits,
and floats between about 1e-300 and 1e300 in magnitude. Most floats are
converted in the compiled code by the exact fast path (digits that fit in 53
bits and a decimal exponent within ±22, where one multiplication or division
by an exact power of ten rounds correctly); the others, such as a timestamp
written with all 17 significant digits, are converted afterwards by Python's
``float``, which rounds correctly too. Anything else (an escape, a non-ASCII
byte, a nested value, a duplicate or missing required field, a value of a
type the field does not take, malformed JSON) makes
:meth:`FlatJsonScanner.scan` decline that record: its row is left empty and
marked, and the caller decodes it the general way, which also names what is
wrong with a bad record. Tests hold that whatever is accepted decodes to
exactly what msgspec gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features.compiled import compiled

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
ObjectArray = npt.NDArray[np.object_]

# What a field takes (bit flags, shared with the compiled code).
_INT = 1
_FLOAT = 2
_TEXT = 4
_REQUIRED = 8

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
# 10**0 .. 10**22 are exact in float64.
_POWERS = np.array([10.0**k for k in range(23)])
_MAX_EXACT = 2**53
_NULL = np.frombuffer(b"null", dtype=np.uint8)
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)


@dataclass(frozen=True)
class ScanField:
    """One field of the flat object.

    Attributes:
        name: The JSON key.
        integer: Takes JSON integers.
        floating: Takes JSON numbers with a fraction or an exponent.
        text: Takes strings.
        required: Must be present and not ``null``.
    """

    name: str
    integer: bool = False
    floating: bool = False
    text: bool = False
    required: bool = False


@dataclass
class Scanned:
    """Columns of a scanned batch.

    Attributes:
        numbers: Each numeric field's values; ``NaN`` where absent, ``null``
            or given as text.
        texts: Each text field's values; ``None`` where absent, ``null`` or
            given as a number.
        declined: Records outside the common case; their rows are empty.
    """

    numbers: dict[str, F64]
    texts: dict[str, ObjectArray]
    declined: npt.NDArray[np.bool_]


class FlatJsonScanner:
    """Decodes batches of flat JSON objects with known fields into columns.

    Keys that are not among ``fields`` are skipped when their value is a
    string, number, boolean or ``null``; a nested value declines the record.

    Args:
        fields: The fields to extract (at most 62).
    """

    def __init__(self, fields: Sequence[ScanField]) -> None:
        if len(fields) > 62:
            raise ValueError("at most 62 fields")
        names = [f.name for f in fields]
        if any(not n.isascii() or not n.isprintable() or '"' in n or "\\" in n for n in names):
            raise ValueError("field names must be printable ASCII without quotes or backslashes")
        self.fields = list(fields)
        encoded = [n.encode() for n in names]
        self._key_buf = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
        ends = np.cumsum([len(k) for k in encoded], dtype=np.int64)
        self._key_start = ends - np.array([len(k) for k in encoded], dtype=np.int64)
        self._key_end = ends
        self._flags = np.array(
            [
                (_INT if f.integer else 0)
                | (_FLOAT if f.floating else 0)
                | (_TEXT if f.text else 0)
                | (_REQUIRED if f.required else 0)
                for f in fields
            ],
            dtype=np.int64,
        )
        self.number_names = [f.name for f in fields if f.integer or f.floating]
        self.text_names = [f.name for f in fields if f.text]
        self._num_slot = np.full(len(fields), -1, dtype=np.int64)
        self._text_slot = np.full(len(fields), -1, dtype=np.int64)
        for i, f in enumerate(fields):
            if f.integer or f.floating:
                self._num_slot[i] = self.number_names.index(f.name)
            if f.text:
                self._text_slot[i] = self.text_names.index(f.name)

    def scan(self, values: Sequence[bytes]) -> Scanned | None:
        """Columns of every value, each record outside the common case marked.

        Returns ``None`` for an empty batch, and for a batch where two
        different texts share a 64-bit hash (not seen in practice; it is
        checked so that it can never merge two values).
        """
        n = len(values)
        if n == 0:
            return None
        joined = b"".join(values)
        buf = np.frombuffer(joined, dtype=np.uint8)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        # Field by row, so that each field's column is contiguous.
        numbers = np.full((len(self.number_names), n), np.nan)
        spans = np.full((n, len(self.text_names), 2), -1, dtype=np.int64)
        hashes = np.zeros((n, len(self.text_names)), dtype=np.uint64)
        declined = np.zeros(n, dtype=bool)
        # (number slot, row, start, end) of floats the compiled code leaves to
        # Python's correctly rounded conversion: per record at most one per
        # number field, and one more for a duplicate key, which declines it.
        deferred = np.empty((n * (len(self.number_names) + 1), 4), dtype=np.int64)
        deferred_count = np.zeros(1, dtype=np.int64)
        _scan(
            buf,
            starts,
            ends,
            self._key_buf,
            self._key_start,
            self._key_end,
            self._flags,
            self._num_slot,
            self._text_slot,
            numbers,
            spans,
            hashes,
            declined,
            deferred,
            deferred_count,
        )
        if deferred_count[0]:
            todo = deferred[: deferred_count[0]]
            todo = todo[~declined[todo[:, 1]]]
            exact = [float(joined[a:b]) for a, b in todo[:, 2:].tolist()]
            numbers[todo[:, 0], todo[:, 1]] = exact
        codes = np.full((n, len(self.text_names)), -1, dtype=np.int64)
        first = np.empty((n, len(self.text_names)), dtype=np.int64)
        if _group(buf, spans, hashes, codes, first) < 0:
            return None
        texts = {}
        for t, name in enumerate(self.text_names):
            # One string per distinct value; the extra last slot is None, which
            # a code of -1 (absent) picks.
            rows = first[: codes[:, t].max() + 1, t]
            strings = np.empty(rows.shape[0] + 1, dtype=object)
            strings[:-1] = [joined[a:b].decode("ascii") for a, b in spans[rows, t].tolist()]
            texts[name] = strings[codes[:, t]]
        return Scanned(
            {name: numbers[j] for j, name in enumerate(self.number_names)},
            texts,
            declined,
        )

    def warm_up(self) -> None:
        """Compile the scanner (or load it from numba's cache) before the first batch."""
        self.scan([b'{"_": 1.5, "__": "x"}'])


@compiled
def _group(buf: U8, spans: I64, hashes: U64, codes: I64, first: I64) -> int:
    """Number each text field's distinct values in order of appearance.

    Fills ``codes`` (rows x fields; -1 where absent) and ``first`` (the row
    where each value first appears, by field). Returns how many distinct
    values the field with the most has, or -1 when two different values share
    a hash (every row is compared byte for byte with its value's first row).
    """
    n = spans.shape[0]
    size = 1
    while size < 2 * n:
        size *= 2
    mask = size - 1
    keys = np.zeros(size, dtype=np.uint64)
    groups = np.empty(size, dtype=np.int64)
    most = 0
    for t in range(spans.shape[1]):
        groups[:] = -1
        count = 0
        for r in range(n):
            a = spans[r, t, 0]
            if a < 0:
                continue
            h = hashes[r, t]
            i = np.int64(h & np.uint64(mask))
            while True:
                g = groups[i]
                if g < 0:
                    groups[i] = count
                    keys[i] = h
                    first[count, t] = r
                    codes[r, t] = count
                    count += 1
                    break
                if keys[i] == h:
                    q = first[g, t]
                    b = spans[q, t, 0]
                    length = spans[r, t, 1] - a
                    if length != spans[q, t, 1] - b:
                        return -1
                    for k in range(length):
                        if buf[a + k] != buf[b + k]:
                            return -1
                    codes[r, t] = g
                    break
                i = (i + 1) & mask
        most = max(most, count)
    return most


@compiled
def _skip(buf: U8, pos: int, end: int) -> int:
    while pos < end:
        c = buf[pos]
        if c != 32 and c != 10 and c != 13 and c != 9:
            return pos
        pos += 1
    return pos


@compiled
def _string_end(buf: U8, pos: int, end: int) -> int:
    """Index of the closing quote of a string whose text starts at ``pos``; -1
    if it ends first or holds an escape, a control character or a non-ASCII
    byte."""
    while pos < end:
        c = buf[pos]
        if c == 34:
            return pos
        if c == 92 or c < 32 or c >= 128:
            return -1
        pos += 1
    return -1


@compiled
def _hash(buf: U8, a: int, b: int) -> np.uint64:
    """64-bit FNV-1a of ``buf[a:b]``."""
    h = _FNV_OFFSET
    for k in range(a, b):
        h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    return h


@compiled
def _literal(buf: U8, pos: int, end: int, word: U8) -> int:
    """Index after ``word`` if it starts at ``pos``, else -1."""
    size = word.shape[0]
    if pos + size > end:
        return -1
    for k in range(size):
        if buf[pos + k] != word[k]:
            return -1
    return int(pos + size)


@compiled
def _number(buf: U8, pos: int, end: int) -> tuple[int, float, int]:
    """Parse a JSON number at ``pos``: (index after it, value, kind), where
    kind is 1 for an integer, 2 for a float, 3 for a well-formed float
    outside the exact fast path (its value is left to the caller), and 0 when
    it is malformed, an integer of more than 18 digits, or a float beyond
    about 1e±300."""
    negative = False
    if buf[pos] == 45:
        negative = True
        pos += 1
    if pos >= end or buf[pos] < 48 or buf[pos] > 57:
        return pos, 0.0, 0
    mantissa = 0
    digits = 0
    exponent = 0
    # Digits past the 18th are not added to the mantissa; ``dropped`` counts
    # those of the integer part (each one a power of ten of magnitude).
    dropped = 0
    exact = True
    if buf[pos] == 48:
        pos += 1
        if pos < end and 48 <= buf[pos] <= 57:
            return pos, 0.0, 0  # a leading zero
    else:
        while pos < end and 48 <= buf[pos] <= 57:
            if digits == 18:
                exact = False
                dropped += 1
            else:
                mantissa = mantissa * 10 + (buf[pos] - 48)
                digits += 1
            pos += 1
    kind = 1
    if pos < end and buf[pos] == 46:
        kind = 2
        pos += 1
        if pos >= end or buf[pos] < 48 or buf[pos] > 57:
            return pos, 0.0, 0
        while pos < end and 48 <= buf[pos] <= 57:
            d = buf[pos] - 48
            if digits == 18:
                exact = False
            else:
                if mantissa != 0 or d != 0:
                    mantissa = mantissa * 10 + d
                    digits += 1
                exponent -= 1
            pos += 1
    if pos < end and (buf[pos] == 101 or buf[pos] == 69):
        kind = 2
        pos += 1
        sign = 1
        if pos < end and (buf[pos] == 43 or buf[pos] == 45):
            if buf[pos] == 45:
                sign = -1
            pos += 1
        if pos >= end or buf[pos] < 48 or buf[pos] > 57:
            return pos, 0.0, 0
        e = 0
        while pos < end and 48 <= buf[pos] <= 57:
            if e < 100_000:
                e = e * 10 + (buf[pos] - 48)
            pos += 1
        exponent += sign * e
    if kind == 1:
        if not exact:
            return pos, 0.0, 0
        value = float(mantissa)
        # An integer -0 is 0; only a float keeps its sign at zero.
        return pos, (-value if negative and mantissa != 0 else value), 1
    if mantissa == 0:
        return pos, (-0.0 if negative else 0.0), 2
    if exact and mantissa <= _MAX_EXACT:
        if 0 <= exponent <= 22:
            value = float(mantissa) * _POWERS[exponent]
            return pos, (-value if negative else value), 2
        if -22 <= exponent < 0:
            value = float(mantissa) / _POWERS[-exponent]
            return pos, (-value if negative else value), 2
    # The decimal exponent of the leading digit: far from the ends of the
    # float range, the exact conversion is left to the caller; near them
    # (where decoders may differ on overflow) the record is declined.
    magnitude = digits + dropped + exponent
    if -300 <= magnitude <= 300:
        return pos, 0.0, 3
    return pos, 0.0, 0


@compiled
def _field(key_buf: U8, key_start: I64, key_end: I64, buf: U8, a: int, b: int, guess: int) -> int:
    """Index of the known field named by ``buf[a:b]``, or -1.

    ``guess`` is tried first: records usually list their fields in one order.
    """
    count = key_start.shape[0]
    size = b - a
    for i in range(-1, count):
        f = guess if i < 0 else i
        if f >= count or key_end[f] - key_start[f] != size:
            continue
        s = key_start[f]
        same = True
        for k in range(size):
            if key_buf[s + k] != buf[a + k]:
                same = False
                break
        if same:
            return f
    return -1


@compiled
def _scan(
    buf: U8,
    starts: I64,
    ends: I64,
    key_buf: U8,
    key_start: I64,
    key_end: I64,
    flags: I64,
    num_slot: I64,
    text_slot: I64,
    numbers: F64,
    spans: I64,
    hashes: U64,
    declined: npt.NDArray[np.bool_],
    deferred: I64,
    deferred_count: I64,
) -> int:
    """Fill ``numbers`` (field by row), ``spans`` and ``hashes`` for each record in the
    common case; mark the others in ``declined``, leaving their rows empty.
    Floats outside the exact fast path go to ``deferred`` (see :func:`_record`).
    Returns how many were declined."""
    required = 0
    for f in range(flags.shape[0]):
        if flags[f] & _REQUIRED:
            required |= 1 << f
    count = 0
    for r in range(starts.shape[0]):
        row_ok = _record(
            buf,
            starts[r],
            ends[r],
            key_buf,
            key_start,
            key_end,
            flags,
            num_slot,
            text_slot,
            required,
            numbers,
            r,
            spans[r],
            hashes[r],
            deferred,
            deferred_count,
        )
        if not row_ok:
            declined[r] = True
            numbers[:, r] = np.nan
            spans[r, :, :] = -1
            count += 1
    return count


@compiled
def _record(
    buf: U8,
    start: int,
    end: int,
    key_buf: U8,
    key_start: I64,
    key_end: I64,
    flags: I64,
    num_slot: I64,
    text_slot: I64,
    required: int,
    numbers: F64,
    row: int,
    spans: I64,
    hashes: U64,
    deferred: I64,
    deferred_count: I64,
) -> bool:
    """Scan one record into ``numbers[:, row]``, ``spans`` and ``hashes``
    (its rows of those), appending to ``deferred`` the (slot, row, start, end)
    of each float left to the caller; False if it is not in the common case."""
    pos = _skip(buf, start, end)
    if pos >= end or buf[pos] != 123:  # {
        return False
    pos = _skip(buf, pos + 1, end)
    if pos >= end:
        return False
    seen = 0
    guess = 0
    if buf[pos] == 125:  # }
        pos += 1
    else:
        while True:
            if pos >= end or buf[pos] != 34:
                return False
            key_a = pos + 1
            key_b = _string_end(buf, key_a, end)
            if key_b < 0:
                return False
            pos = _skip(buf, key_b + 1, end)
            if pos >= end or buf[pos] != 58:  # :
                return False
            pos = _skip(buf, pos + 1, end)
            if pos >= end:
                return False
            f = _field(key_buf, key_start, key_end, buf, key_a, key_b, guess)
            c = buf[pos]
            if c == 34:  # a string
                value_b = _string_end(buf, pos + 1, end)
                if value_b < 0:
                    return False
                if f >= 0:
                    if flags[f] & _TEXT == 0:
                        return False
                    t = text_slot[f]
                    spans[t, 0] = pos + 1
                    spans[t, 1] = value_b
                    hashes[t] = _hash(buf, pos + 1, value_b)
                pos = value_b + 1
            elif c == 110:  # null
                pos = _literal(buf, pos, end, _NULL)
                if pos < 0 or (f >= 0 and flags[f] & _REQUIRED):
                    return False
            elif c == 116 or c == 102:  # true, false: no known field takes them
                pos = _literal(buf, pos, end, _TRUE if c == 116 else _FALSE)
                if pos < 0 or f >= 0:
                    return False
            elif c == 45 or 48 <= c <= 57:
                number_a = pos
                pos, value, kind = _number(buf, pos, end)
                if kind == 0:
                    return False
                if f >= 0:
                    if (kind == 1 and flags[f] & _INT == 0) or (
                        kind >= 2 and flags[f] & _FLOAT == 0
                    ):
                        return False
                    if kind == 3:  # converted exactly by the caller
                        k = deferred_count[0]
                        deferred[k, 0] = num_slot[f]
                        deferred[k, 1] = row
                        deferred[k, 2] = number_a
                        deferred[k, 3] = pos
                        deferred_count[0] = k + 1
                    else:
                        numbers[num_slot[f], row] = value
            else:  # nested or malformed
                return False
            if f >= 0:
                if seen & (1 << f):
                    return False
                seen |= 1 << f
                guess = f + 1
            pos = _skip(buf, pos, end)
            if pos >= end:
                return False
            if buf[pos] == 44:  # ,
                pos = _skip(buf, pos + 1, end)
                continue
            if buf[pos] == 125:
                pos += 1
                break
            return False
    return _skip(buf, pos, end) == end and (seen & required) == required
