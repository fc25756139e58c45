"""Zeek ``conn.log`` records (format name ``zeek``).

Two encodings of the same log are accepted, in the same batch if need be:

* JSON, one object per message, as Zeek writes with ``LogAscii::use_json``.
  Field names are Zeek's own (``id.orig_h``, ``orig_bytes``, ...); unset
  fields are simply absent. ``ts`` is epoch seconds, or an ISO 8601 string
  when Zeek runs with ``JSON::TS_ISO8601``.
* Zeek's tab-separated log: one data line per message. The column order is
  the standard ``conn.log`` order (:data:`CONN_FIELDS`) until a ``#fields``
  header line arrives as a message; from then on this adapter instance uses
  the header's order. Header and comment lines (``#separator``,
  ``#unset_field``, ``#empty_field``, ``#types``, ``#close``, ...) are
  *skipped*, not dead-lettered, and the separator and the unset and empty
  markers they declare are honoured. A header applies to the lines after it
  in the same batch and to later batches of the same adapter instance.

Mapping to the canonical schema:

* ``ts`` is the connection's start; ``id.orig_*`` is the source (the side
  that opened the connection), ``id.resp_*`` the destination.
* ``src_bytes``/``dst_bytes`` are IP-level bytes (``orig_ip_bytes``,
  ``resp_ip_bytes``), as flow exporters count them; the payload counts
  ``orig_bytes``/``resp_bytes`` stand in only where those are unset.
* ``proto`` comes from the transport name; for ``unknown_transport`` the
  ``ip_proto`` column of newer Zeek versions is used when present.
* ``conn_state`` is Zeek's own; ``service`` is kept as Zeek writes it.
* ``tcp_flags`` (TCP only) is derived from ``history``, upper case for the
  originator and lower case for the responder, both ORed together:

  - ``S`` (SYN without ACK): SYN
  - ``H`` (SYN+ACK): SYN, ACK
  - ``A`` (pure ACK): ACK
  - ``D`` (segment with payload): PSH, ACK
  - ``F`` (FIN): FIN
  - ``R`` (RST): RST
  - ``I`` (inconsistent segment, SYN+RST): SYN, RST
  - ``Q`` (multi-flag segment, SYN with FIN or RST): SYN

  Zeek does not record PSH itself; a payload segment is reported as PSH+ACK
  because that is what a flow exporter sees for nearly all of them. The
  other letters (C, G, T, W, ``^``...) describe anomalies, not flags.
* The Stratosphere labelled logs add ``label`` and ``detailedlabel``
  columns; they become the extras ``label`` and ``detailed_label``.

:func:`load_table` reads such a labelled log (or a folder of them) as a
feature table for evaluation.

This module also holds what the other text formats share: splitting
one-record-per-line messages into columns (:func:`split_lines`), parsing
numbers and times column-wise (:func:`parse_floats`, :func:`parse_times`)
and joining decoded parts of a batch (:func:`merge`, :func:`renumber`); the
CICFlowMeter and Suricata adapters import them from here.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]

from features.formats import register
from features.formats.base import Decoded, one_object_per_line, validate
from features.formats.datasets import LabelledTable
from features.records import (
    FloatArray,
    FlowBatch,
    IndexArray,
    ObjectArray,
    Reject,
    from_columns,
    protocol_number,
)

#: The columns of a standard ``conn.log``, in Zeek's order.
CONN_FIELDS: Final = (
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
)

_FIN, _SYN, _RST, _PSH, _ACK = 1, 2, 4, 8, 16
#: TCP flags implied by each ``history`` letter (upper case; see module doc).
HISTORY_FLAGS: Final[Mapping[str, int]] = {
    "S": _SYN,
    "H": _SYN | _ACK,
    "A": _ACK,
    "D": _PSH | _ACK,
    "F": _FIN,
    "R": _RST,
    "I": _SYN | _RST,
    "Q": _SYN,
}

_NUMBERS: Final = (
    "id.orig_p",
    "id.resp_p",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "orig_pkts",
    "resp_pkts",
    "orig_ip_bytes",
    "resp_ip_bytes",
    "missed_bytes",
    "ip_proto",
)
_TEXTS: Final = ("id.orig_h", "id.resp_h", "proto", "service", "conn_state")
_LABELS: Final[Mapping[str, str]] = {
    "label": "label",
    "detailedlabel": "detailed_label",
    "detailed-label": "detailed_label",
    "detailed_label": "detailed_label",
}
#: The columns this adapter reads from a tab-separated line.
_USED: Final = frozenset(("ts", "history", *_NUMBERS, *_TEXTS, *_LABELS))

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConnRecord(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Wire form of one JSON ``conn.log`` entry (the fields used here)."""

    ts: float | str
    orig_h: str = msgspec.field(name="id.orig_h")
    orig_p: Port | None = msgspec.field(default=None, name="id.orig_p")
    resp_h: str = msgspec.field(name="id.resp_h")
    resp_p: Port | None = msgspec.field(default=None, name="id.resp_p")
    proto: str
    ip_proto: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    service: str | None = None
    duration: float | None = None
    orig_bytes: float | None = None
    resp_bytes: float | None = None
    conn_state: str | None = None
    history: str | None = None
    orig_pkts: float | None = None
    orig_ip_bytes: float | None = None
    resp_pkts: float | None = None
    resp_ip_bytes: float | None = None
    label: str | None = None
    detailedlabel: str | None = None


#: ``ConnRecord`` fields in tuple order, under their Zeek names.
_JSON_NAMES: Final = tuple(f.encode_name for f in msgspec.structs.fields(ConnRecord))
_ONE = msgspec.json.Decoder(ConnRecord)


@dataclass(frozen=True)
class TsvLayout:
    """How a tab-separated log is laid out, as its header lines declare.

    Attributes:
        fields: Column names in order.
        separator: The one-character column separator.
        unset: The marker of an unset value.
        empty: The marker of an empty set, vector or string.
    """

    fields: tuple[str, ...] = CONN_FIELDS
    separator: str = "\t"
    unset: str = "-"
    empty: str = "(empty)"

    def updated(self, header: str) -> TsvLayout:
        """Return the layout after one ``#`` header line (``self`` if unknown).

        Raises:
            ValueError: The header declares something this reader cannot use.
        """
        key, _, value = header.partition(self.separator)
        if key.startswith("#separator"):
            sep = _unescape(header.removeprefix("#separator").strip())
            if len(sep) != 1:
                raise ValueError(f"unsupported separator {sep!r}: one character only")
            return replace(self, separator=sep)
        if key == "#fields":
            names = tuple(value.split(self.separator))
            if len(set(names)) != len(names) or "" in names:
                raise ValueError("'#fields' header with empty or repeated names")
            return replace(self, fields=names)
        if key == "#unset_field":
            return replace(self, unset=value)
        if key == "#empty_field":
            return replace(self, empty=value)
        return self


class ZeekConn:
    """Adapter for Zeek ``conn.log`` entries, JSON or tab-separated."""

    name = "zeek"

    def __init__(self, layout: TsvLayout | None = None) -> None:
        """Start with ``layout`` (the standard ``conn.log`` one by default)."""
        self.layout = layout or TsvLayout()

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode a micro-batch of JSON objects and/or tab-separated lines."""
        joined = b"\n".join(values)
        if not (joined[:1] == b"{" or b"\n{" in joined):
            return self._decode_tsv(values, joined)
        is_json = [v[:1] == b"{" for v in values]
        if all(is_json):
            return _decode_json(values)
        parts: list[Decoded] = []
        for want_json in (True, False):
            index = [i for i, j in enumerate(is_json) if j == want_json]
            picked = [values[i] for i in index]
            part = _decode_json(picked) if want_json else self._decode_tsv(picked)
            parts.append(renumber(part, np.array(index, dtype=np.int64)))
        return merge(parts)

    def matches(self, sample: bytes) -> bool:
        """A conn.log JSON object, a Zeek header line or a conn.log data line."""
        if sample.startswith((b"#separator", b"#fields\tts\tuid")):
            return True
        if sample[:1] == b"{":
            return len(_decode_json([sample]).batch) == 1
        fields = sample.rstrip(b"\r\n").split(b"\t")
        if len(fields) < len(CONN_FIELDS):
            return False
        line = b"\t".join(fields[: len(CONN_FIELDS)])
        return len(ZeekConn().decode([line]).batch) == 1

    def read_file(self, path: Path) -> FlowBatch:
        """Read a whole tab-separated or JSON-lines conn.log.

        Raises:
            ValueError: A line could not be decoded (the first is named).
        """
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        decoded = ZeekConn().decode(lines)
        if decoded.rejects:
            first = decoded.rejects[0]
            raise ValueError(
                f"{path}: line {first.position + 1}: {first.reason} "
                f"({len(decoded.rejects)} bad lines in all)"
            )
        return decoded.batch

    def _decode_tsv(self, values: Sequence[bytes], joined: bytes | None = None) -> Decoded:
        """Decode lines, letting ``#`` header lines change the layout."""
        if joined is None:
            joined = b"\n".join(values)
        if not (joined[:1] == b"#" or b"\n#" in joined):
            return _decode_lines(values, self.layout, joined)
        parts: list[Decoded] = []
        start = 0
        headers = [i for i, v in enumerate(values) if v[:1] == b"#"]
        for i in [*headers, len(values)]:
            if i > start:
                part = _decode_lines(values[start:i], self.layout)
                parts.append(renumber(part, np.arange(start, i, dtype=np.int64)))
            if i < len(values):
                parts.append(self._header(values[i], i))
            start = i + 1
        return merge(parts)

    def _header(self, value: bytes, position: int) -> Decoded:
        """Apply one header line; it is skipped, or rejected if unusable."""
        try:
            self.layout = self.layout.updated(value.decode().rstrip("\r\n"))
        except UnicodeDecodeError:
            return Decoded(FlowBatch.empty(), [Reject(position, "header not UTF-8")])
        except ValueError as exc:
            return Decoded(FlowBatch.empty(), [Reject(position, f"header: {exc}")])
        return Decoded(FlowBatch.empty(), skipped=[position])


def _unescape(text: str) -> str:
    r"""Turn Zeek's ``\x09`` escapes back into characters."""
    try:
        return text.encode().decode("unicode_escape")
    except UnicodeDecodeError:
        return text


def _decode_lines(
    values: Sequence[bytes], layout: TsvLayout, joined: bytes | None = None
) -> Decoded:
    """Decode data lines laid out as ``layout`` says (positions from 0)."""
    wanted = [f for f in layout.fields if f in _USED]
    columns, rows, reasons = split_lines(
        values,
        LineFormat(
            layout.fields,
            layout.separator,
            (layout.unset, layout.empty),
            "if the log's columns differ, send its '#fields' header line first",
        ),
        wanted,
        joined,
    )

    # Cells that do not parse are flagged on a copy aligned with ``rows``.
    sub = reasons[rows]
    numbers = {k: parse_floats(v, k, sub) for k, v in columns.items() if k in _NUMBERS}
    texts = {k: text_values(v) for k, v in columns.items() if k not in _NUMBERS}
    texts.pop("ts", None)
    ts = _text_times(columns["ts"], sub) if "ts" in columns else None
    reasons[rows] = sub
    return _finish(_Raw(len(rows), ts, numbers, texts), rows, reasons)


# --- one record per line, tab- or comma-separated ---------------------------


@dataclass(frozen=True)
class LineFormat:
    """How one-record-per-line text is laid out.

    Also used by the CICFlowMeter adapter for its comma-separated lines.

    Attributes:
        fields: Column names in order.
        separator: One character between fields.
        null_values: Cell texts that mean "no value".
        hint: Advice appended when a line has the wrong number of fields.
    """

    fields: tuple[str, ...]
    separator: str
    null_values: tuple[str, ...]
    hint: str = ""

    def width_problem(self, width: int) -> str:
        """Say that a line had ``width`` fields instead of the layout's."""
        kind = {"\t": "tab-separated", ",": "comma-separated"}.get(
            self.separator, f"{self.separator!r}-separated"
        )
        text = (
            f"expected {len(self.fields)} {kind} fields "
            f"({', '.join(self.fields[:3])}, ...), got {width}"
        )
        return f"{text}; {self.hint}" if self.hint else text


def split_lines(
    values: Sequence[bytes],
    layout: LineFormat,
    wanted: Sequence[str],
    joined: bytes | None = None,
) -> tuple[dict[str, Any], IndexArray, ObjectArray]:
    """Split one-record-per-line messages into columns of text.

    Fields are never quoted. Lines that are empty, hold a line break, are
    not UTF-8 or have the wrong number of fields are flagged, not parsed.

    Args:
        values: One line per message (a trailing newline is allowed).
        layout: Field names and separators.
        wanted: The fields to return.
        joined: ``values`` joined by newlines, when the caller has it.

    Returns:
        The wanted columns (pyarrow text arrays, nulls where a null marker
        stood), the index in ``values`` of each of their rows, and for each
        value the reason it was left out (``None`` if it was not).
    """
    reasons: ObjectArray = np.full(len(values), None, dtype=object)
    if joined is not None and all(values) and b"\r" not in joined and _is_utf8(joined):
        parsed = _parse(values, reasons, layout, wanted, joined)
        if parsed is not None:  # the usual case: one clean line per value
            return parsed[0], parsed[1], reasons

    # Check each line, leave out the bad ones and parse the rest.
    lines = [v.rstrip(b"\r\n") for v in values]
    _flag_lines(lines, reasons, _line_problem)
    parsed = _parse(lines, reasons, layout, wanted, None)
    if parsed is None:  # find the lines the parser refuses, then try once more
        _flag_lines(lines, reasons, _unsplittable, layout)
        parsed = _parse(lines, reasons, layout, wanted, None)
    if parsed is None:
        reasons[pd.isna(reasons)] = "line could not be split into fields"
        empty = pa.chunked_array([], type=pa.string())
        return {f: empty for f in wanted}, np.empty(0, dtype=np.int64), reasons
    return parsed[0], parsed[1], reasons


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _flag_lines(
    lines: Sequence[bytes],
    reasons: ObjectArray,
    check: Callable[[bytes, LineFormat | None], str | None],
    layout: LineFormat | None = None,
) -> None:
    for i, line in enumerate(lines):
        if reasons[i] is None:
            reasons[i] = check(line, layout)


def _line_problem(line: bytes, layout: LineFormat | None) -> str | None:
    if not line.strip():
        return "empty message"
    if b"\n" in line or b"\r" in line:
        return "a record must be one line; this one has line breaks"
    if not _is_utf8(line):
        error = _utf8_error(line)
        return f"line is not UTF-8 text ({error.reason} at byte {error.start})"
    return None


def _utf8_error(line: bytes) -> UnicodeDecodeError:
    try:
        line.decode()
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("line is valid UTF-8")  # pragma: no cover


def _unsplittable(line: bytes, layout: LineFormat | None) -> str | None:
    """Try the line on its own (only after the batch failed twice)."""
    assert layout is not None
    alone: ObjectArray = np.full(1, None, dtype=object)
    if _parse([line], alone, layout, list(layout.fields), None) is None:
        return "line could not be split into fields"
    return alone[0]  # type: ignore[no-any-return]


def _parse(
    lines: Sequence[bytes],
    reasons: ObjectArray,
    layout: LineFormat,
    wanted: Sequence[str],
    joined: bytes | None,
) -> tuple[dict[str, Any], IndexArray] | None:
    """Parse the lines not yet flagged; ``None`` if the parser refused them.

    Lines with the wrong number of fields are flagged in ``reasons``.
    """
    good = np.flatnonzero(pd.isna(reasons))
    if good.size == 0:
        return {f: pa.chunked_array([], type=pa.string()) for f in wanted}, good
    if joined is None:
        joined = b"\n".join([lines[i] for i in good.tolist()])
    misfits: list[tuple[int, int]] = []

    def misfit(row: Any) -> str:
        misfits.append((row.number - 1, row.actual_columns))
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(joined),
            read_options=pacsv.ReadOptions(column_names=list(layout.fields), use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=layout.separator,
                quote_char=False,
                escape_char=False,
                double_quote=False,
                ignore_empty_lines=False,
                invalid_row_handler=misfit,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={f: pa.string() for f in wanted},
                include_columns=list(wanted),
                null_values=list(layout.null_values),
                strings_can_be_null=True,
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows + len(misfits) != good.size:  # a value held a line break
        return None
    rows = np.delete(good, [row for row, _ in misfits])
    for row, width in misfits:
        reasons[good[row]] = layout.width_problem(width)
    return {f: table.column(f) for f in wanted}, rows


def parse_floats(column: Any, name: str, reasons: ObjectArray) -> FloatArray:
    """Parse a pyarrow text column as numbers; bad cells are flagged.

    Args:
        column: Text cells, nulls for unset ones (which become ``NaN``).
        name: The field's name in the source, for the reason.
        reasons: Per-row reasons aligned with ``column``; updated in place.
    """
    try:
        out: FloatArray = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        valid = np.asarray(pc.is_valid(column))
    except pa.ArrowInvalid:
        out, valid = _floats_one_by_one(text_values(column))
    bad = np.isnan(out) & valid
    if bad.any():
        _flag_values(text_values(column), bad, name, "a number", reasons)
    return out


def text_values(column: Any) -> ObjectArray:
    """A pyarrow text column as an object array of ``str`` or ``None``."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _floats_one_by_one(texts: ObjectArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Parse each distinct text with the same grammar as the batch parse."""
    codes, uniques = pd.factorize(texts)
    parsed = [_float_or_nan(str(u)) for u in uniques]
    table = np.array([*parsed, np.nan], dtype=np.float64)
    return table[codes], codes >= 0


def _float_or_nan(text: str) -> float:
    try:
        return float(pc.cast(pa.array([text]), pa.float64())[0].as_py())
    except (pa.ArrowInvalid, TypeError):
        return float("nan")


def _flag_values(
    values: ObjectArray,
    bad: npt.NDArray[np.bool_],
    name: str,
    what: str,
    reasons: ObjectArray,
) -> None:
    """Record, for each bad cell, which field held what."""
    for i in np.flatnonzero(bad):
        if reasons[i] is None:
            reasons[i] = f"field {name!r} is not {what}: {_clip(values[i])}"


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def renumber(decoded: Decoded, index: IndexArray) -> Decoded:
    """Map a part's positions (``0..``) back to the whole batch's positions."""
    batch = decoded.batch
    batch.position = index[batch.position]
    return Decoded(
        batch,
        [Reject(int(index[r.position]), r.reason) for r in decoded.rejects],
        [int(index[s]) for s in decoded.skipped],
    )


def merge(parts: Iterable[Decoded]) -> Decoded:
    """Join decoded parts of one batch into one, rows in input order."""
    parts = list(parts)
    batch = FlowBatch.concat([p.batch for p in parts if len(p.batch)])
    batch = batch.take(np.argsort(batch.position, kind="stable"))
    rejects = sorted((r for p in parts for r in p.rejects), key=_by_position)
    skipped = sorted(s for p in parts for s in p.skipped)
    return Decoded(batch, rejects, skipped)


def _by_position(reject: Reject) -> int:
    return reject.position


# --- Zeek columns to canonical flows -----------------------------------------


@dataclass
class _Raw:
    """Columns in Zeek's terms: numbers as floats, strings as objects."""

    n: int
    ts: FloatArray | None
    numbers: dict[str, FloatArray]
    texts: dict[str, ObjectArray]

    def num(self, name: str) -> FloatArray:
        return self.numbers.get(name, np.full(self.n, np.nan))

    def text(self, name: str) -> ObjectArray:
        return self.texts.get(name, np.full(self.n, None, dtype=object))


def _finish(raw: _Raw, position: IndexArray, reasons: ObjectArray) -> Decoded:
    """Build, validate and report the rows; ``reasons`` spans all positions."""
    sub = reasons[position]
    proto = _protocols(raw.text("proto"), raw.num("ip_proto"), sub)
    values: dict[str, npt.NDArray[np.generic]] = {
        "ts": raw.ts if raw.ts is not None else np.full(raw.n, np.nan),
        "src_ip": raw.text("id.orig_h"),
        "dst_ip": raw.text("id.resp_h"),
        "src_port": raw.num("id.orig_p"),
        "dst_port": raw.num("id.resp_p"),
        "proto": proto,
        "duration": raw.num("duration"),
        "src_bytes": _coalesce(raw.num("orig_ip_bytes"), raw.num("orig_bytes")),
        "dst_bytes": _coalesce(raw.num("resp_ip_bytes"), raw.num("resp_bytes")),
        "src_pkts": raw.num("orig_pkts"),
        "dst_pkts": raw.num("resp_pkts"),
        "tcp_flags": _history_flags(raw.text("history"), proto),
        "service": _blank_none(raw.text("service")),
        "conn_state": raw.text("conn_state"),
    }
    keep = pd.isna(sub)
    reasons[position] = sub
    extras = {_LABELS[k]: v[keep] for k, v in raw.texts.items() if k in _LABELS}
    batch = from_columns(
        {k: v[keep] for k, v in values.items()},
        int(keep.sum()),
        position=position[keep],
        extras=extras,
    )
    decoded = validate(batch)
    rows = np.flatnonzero(pd.notna(reasons))
    early = [Reject(int(i), str(reasons[i])) for i in rows]
    decoded.rejects = sorted(early + decoded.rejects, key=_by_position)
    return decoded


def _protocols(names: ObjectArray, ip_proto: FloatArray, reasons: ObjectArray) -> FloatArray:
    """IANA numbers for transport names; unknown names are flagged."""
    codes, uniques = pd.factorize(names)
    table = np.array([*(protocol_number(u) for u in uniques), np.nan])
    numbers = np.where(np.isnan(table[codes]), ip_proto, table[codes])
    _flag_values(names, (codes >= 0) & np.isnan(numbers), "proto", "a known protocol", reasons)
    return numbers


def _history_flags(history: ObjectArray, proto: FloatArray) -> FloatArray:
    """OR of the TCP flags each ``history`` implies; ``NaN`` unless TCP."""
    codes, uniques = pd.factorize(history)
    table = np.array([*(_flags_of(str(h)) for h in uniques), np.nan])
    return np.where(proto == 6, table[codes], np.nan)


def _flags_of(history: str) -> float:
    flags = _HISTORY_CACHE.get(history)
    if flags is None:
        flags = 0
        for letter in set(history.upper()):
            flags |= HISTORY_FLAGS.get(letter, 0)
        if len(_HISTORY_CACHE) >= 1 << 16:
            _HISTORY_CACHE.clear()
        _HISTORY_CACHE[history] = flags
    return float(flags)


_HISTORY_CACHE: dict[str, int] = {}


def _coalesce(first: FloatArray, second: FloatArray) -> FloatArray:
    return np.where(np.isnan(first), second, first)


def _blank_none(texts: ObjectArray) -> ObjectArray:
    out = texts.copy()
    out[out == ""] = None
    return out


def _text_times(column: Any, reasons: ObjectArray) -> FloatArray:
    """Epoch seconds from a pyarrow text column (numbers or ISO 8601)."""
    try:
        out: FloatArray = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        valid = np.asarray(pc.is_valid(column))
    except pa.ArrowInvalid:
        return _mixed_times(text_values(column), reasons)
    if (np.isnan(out) & valid).any():  # e.g. the text "nan"
        return _mixed_times(text_values(column), reasons)
    return out


def _times(values: ObjectArray, reasons: ObjectArray) -> FloatArray:
    """Epoch seconds from JSON values: numbers, numeric text or ISO 8601."""
    if any(isinstance(v, str) for v in values):
        return _mixed_times(values, reasons)
    return values.astype(np.float64)


def _mixed_times(values: ObjectArray, reasons: ObjectArray) -> FloatArray:
    """Epoch seconds from numbers and text (numeric, or ISO 8601)."""
    is_text = np.array([isinstance(v, str) for v in values], dtype=bool)
    out = np.full(len(values), np.nan)
    numbers = ~is_text & pd.notna(values)
    out[numbers] = values[numbers].astype(np.float64)
    out[is_text] = parse_times(values[is_text], epoch=True)
    bad = pd.notna(values) & np.isnan(out)
    _flag_values(values, bad, "ts", "a time (epoch seconds or ISO 8601)", reasons)
    return out


def parse_times(texts: Any, formats: Sequence[str] = (), *, epoch: bool = False) -> FloatArray:
    """Epoch seconds from time texts, ``NaN`` where a text is not a time.

    Also used by the Suricata and CICFlowMeter adapters. A text is read as
    ISO 8601 (with a zone, or without one and then taken as UTC), else with
    the first of the ``strptime`` ``formats`` that fits (taken as UTC), else,
    if ``epoch``, as a number of seconds. Whole columns are parsed at once
    when they allow it, yet a text gives the same result whatever else is
    in its batch.

    Args:
        texts: An object array of ``str`` or ``None`` (missing, giving
            ``NaN``), or a pyarrow text array.
        formats: ``strptime`` formats to try after ISO 8601.
        epoch: Whether plain numbers are accepted as epoch seconds.
    """
    array = texts if hasattr(texts, "type") else pa.array(texts, type=pa.string())
    iso = pc.match_substring_regex(array, _ISO_DATE)
    if pc.all(pc.or_kleene(iso, pc.is_null(array))).as_py():
        for zone in ("UTC", None):
            try:
                return _seconds(pc.cast(array, pa.timestamp("ns", tz=zone)), 1e9)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    out = np.full(len(array), np.nan)
    for fmt in formats:
        if not np.isnan(out).any():
            break
        parsed = pc.strptime(array, format=fmt, unit="s", error_is_null=True)
        out = np.where(np.isnan(out), _seconds(parsed, 1.0), out)
    todo = np.isnan(out) & np.asarray(pc.is_valid(array))
    if todo.any():
        codes, uniques = pd.factorize(text_values(array)[todo])
        table = np.array([*(_one_time(str(u), epoch) for u in uniques), np.nan])
        out[todo] = table[codes]
    return out


#: How an ISO 8601 date-time starts; only such texts are tried as one.
_ISO_DATE: Final = r"^\d{4}-\d{2}-\d{2}"
_ISO_START = re.compile(_ISO_DATE)


def _seconds(stamps: Any, per_second: float) -> FloatArray:
    """Seconds since the epoch from a pyarrow timestamp array (nulls: NaN)."""
    ticks = pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(ticks, dtype=np.float64) / per_second


def _one_time(text: str, epoch: bool) -> float:
    """Parse one text the way :func:`parse_times` parses a whole column."""
    if _ISO_START.match(text):
        for zone in ("UTC", None):
            try:
                stamp = pc.cast(pa.array([text]), pa.timestamp("ns", tz=zone))
                return float(_seconds(stamp, 1e9)[0])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    return _float_or_nan(text) if epoch else float("nan")


# --- JSON ---------------------------------------------------------------------


def _decode_json(values: Sequence[bytes]) -> Decoded:
    """Decode JSON conn.log objects, isolating bad ones only if needed."""
    records, reasons = _json_records(values)
    rows = np.flatnonzero(pd.isna(reasons))
    tuples = [msgspec.structs.astuple(r) for r in records if r is not None]
    n = len(tuples)
    named: dict[str, tuple[Any, ...]] = {}
    if n:
        named = dict(zip(_JSON_NAMES, zip(*tuples, strict=True), strict=True))
    numbers: dict[str, FloatArray] = {
        k: np.array(named[k], dtype=np.float64) for k in _NUMBERS if k in named
    }
    texts: dict[str, ObjectArray] = {
        k: _object_array(named[k]) for k in (*_TEXTS, "history") if k in named
    }
    if n and any(v is not None for v in named["label"]):
        texts["label"] = _object_array(named["label"])
        texts["detailedlabel"] = _object_array(named["detailedlabel"])
    sub = reasons[rows]
    ts = _times(_object_array(named["ts"]), sub) if n else np.empty(0)
    reasons[rows] = sub
    return _finish(_Raw(n, ts, numbers, texts), rows, reasons)


def _json_records(
    values: Sequence[bytes],
) -> tuple[list[ConnRecord | None], ObjectArray]:
    """Decode every value; rejected ones are ``None`` with a reason."""
    reasons: ObjectArray = np.full(len(values), None, dtype=object)
    joined = b"\n".join(values)
    if one_object_per_line(joined, len(values)):
        try:
            many = _ONE.decode_lines(joined)
            if len(many) == len(values):
                return list(many), reasons
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    records: list[ConnRecord | None] = []
    for i, value in enumerate(values):
        try:
            records.append(_ONE.decode(value))
        except msgspec.ValidationError as exc:
            records.append(None)
            reasons[i] = f"invalid conn.log record: {exc}"
        except msgspec.DecodeError as exc:
            records.append(None)
            reasons[i] = f"not valid JSON: {_clip(str(exc))}"
    return records, reasons


def _object_array(values: Sequence[object]) -> ObjectArray:
    out: ObjectArray = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


# --- evaluation table ----------------------------------------------------------

#: Numeric feature columns of :func:`load_table`, under Zeek's names.
TABLE_NUMERIC: Final = (
    "id.orig_p",
    "id.resp_p",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "orig_pkts",
    "resp_pkts",
    "orig_ip_bytes",
    "resp_ip_bytes",
)
#: Categorical feature columns of :func:`load_table`.
TABLE_CATEGORICAL: Final = ("proto", "service", "conn_state", "history")


def load_table(path: Path) -> LabelledTable:
    """Read a labelled Stratosphere ``conn.log`` (or a folder of them).

    Args:
        path: A tab-separated log with ``label`` and ``detailedlabel``
            columns, or a folder whose ``*.labeled`` / ``*.log`` files are
            read in name order and stacked.

    Returns:
        The features of :data:`TABLE_NUMERIC` (``float64``, ``NaN`` where
        Zeek left the value unset) and :data:`TABLE_CATEGORICAL` (``str``,
        ``"-"`` where unset), ``label`` True for ``Malicious`` rows and
        ``attack_class`` the detailed label (the label itself where that is
        empty). ``Background`` rows (unknown ground truth) are dropped.

    Raises:
        ValueError: The file has no label column or a label other than
            Malicious, Benign or Background.
    """
    files = (
        sorted(p for p in path.iterdir() if p.suffix in {".labeled", ".log"})
        if path.is_dir()
        else [path]
    )
    frame = pd.concat([_labelled_frame(p) for p in files], ignore_index=True)
    kind = frame["label"].fillna("").str.strip().str.lower()
    unknown = sorted(set(kind) - {"malicious", "benign", "background"})
    if unknown:
        raise ValueError(f"{path}: unknown labels {unknown}")
    frame = frame[kind != "background"].reset_index(drop=True)
    label = (kind[kind != "background"] == "malicious").to_numpy(dtype=bool)
    detail = frame["detailed_label"].fillna("").astype(str)
    attack_class = detail.where(detail != "", frame["label"].astype(str))
    features = pd.DataFrame(
        {
            **{
                c: pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
                for c in TABLE_NUMERIC
            },
            **{c: frame[c].fillna("-").astype(str) for c in TABLE_CATEGORICAL},
        }
    )
    return LabelledTable(
        frame=features,
        numeric_columns=TABLE_NUMERIC,
        categorical_columns=TABLE_CATEGORICAL,
        label=label,
        attack_class=attack_class.to_numpy(dtype=object),
    )


def _labelled_frame(path: Path) -> pd.DataFrame:
    """All columns of one labelled TSV log as text (``None`` where unset)."""
    layout = TsvLayout()
    rows: list[bytes] = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"#"):
            layout = layout.updated(line.decode())
        elif line.strip():
            rows.append(line)
    names = {_LABELS.get(f, f) for f in layout.fields}
    if "label" not in names or "detailed_label" not in names:
        raise ValueError(f"{path}: no 'label' and 'detailedlabel' columns")
    text = "\n".join(r.decode() for r in rows)
    frame = pd.read_csv(
        io.StringIO(text),
        sep=layout.separator,
        names=list(layout.fields),
        dtype=str,
        na_values=[layout.unset, layout.empty],
        keep_default_na=False,
        quoting=3,  # csv.QUOTE_NONE: Zeek never quotes
    )
    return frame.rename(columns=dict(_LABELS))


register("zeek", ZeekConn)
