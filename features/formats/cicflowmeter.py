"""CICFlowMeter flow features (format name ``cicflowmeter``).

Three spellings of the same columns are in use, and all are read:

* the Java CICFlowMeter's CSV (``Src IP``, ``Tot Fwd Pkts``,
  ``TotLen Fwd Pkts``, ``FIN Flag Cnt``, ...);
* the CIC-IDS2017 files (``Source IP``, ``Total Fwd Packets``,
  ``Total Length of Fwd Packets``, ``FIN Flag Count``, names often with a
  leading space);
* the Python ``cicflowmeter`` package (``src_ip``, ``tot_fwd_pkts``,
  ``totlen_fwd_pkts``, ``fin_flag_cnt``, ...).

:func:`normalise` maps each spelling to one key and :data:`CANONICAL` maps
those keys to canonical fields; every other column is ignored.

On Kafka a message is either one CSV line or one JSON object. CSV lines
follow the Java tool's column order (:data:`JAVA_COLUMNS`) until a header
line arrives as a message: it sets the order for the lines after it (in
this adapter instance) and is skipped, not dead-lettered. Fields are never
quoted in these files; a line break inside a message is an error.

Mapping to the canonical schema:

* ``Flow Duration`` is in microseconds in all three tools; ``duration`` is
  in seconds.
* ``ts`` is the flow's start (``Timestamp``): ISO 8601
  (``2024-03-05 10:14:01``, as the Python tool writes), or day-first
  ``dd/mm/yyyy hh:mm[:ss][ AM|PM]`` as the Java tool and the CIC data sets
  write it (``dayfirst=False`` reads month-first). Times without a zone are
  taken as UTC; the CIC data sets were recorded in local time, so their
  ``ts`` is off by the capture's UTC offset. Epoch numbers are accepted too
  (seconds, or milliseconds when above 10**11).
* ``src_*`` is the forward direction (from the flow's first packet),
  ``dst_*`` the backward one. Byte counts are CICFlowMeter's, i.e. payload
  bytes (``TotLen ... Pkts``).
* ``tcp_flags`` (TCP only) has a flag set when its count column (``FIN Flag
  Cnt``, ..., ``Fwd PSH Flags``) is above zero; CIC's ``CWE Flag Count`` is
  read as CWR.
* There is no ``service`` or ``conn_state``; ``Label`` goes to the
  ``label`` extra.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from features.formats import register
from features.formats.base import Decoded, one_object_per_line, validate
from features.formats.zeek import (
    LineFormat,
    merge,
    parse_floats,
    parse_times,
    renumber,
    split_lines,
    text_values,
)
from features.records import (
    FloatArray,
    FlowBatch,
    IndexArray,
    ObjectArray,
    Reject,
    from_columns,
    protocol_number,
)

#: Column order of the Java CICFlowMeter's CSV output.
JAVA_COLUMNS: Final = (
    "Flow ID",
    "Src IP",
    "Src Port",
    "Dst IP",
    "Dst Port",
    "Protocol",
    "Timestamp",
    "Flow Duration",
    "Tot Fwd Pkts",
    "Tot Bwd Pkts",
    "TotLen Fwd Pkts",
    "TotLen Bwd Pkts",
    "Fwd Pkt Len Max",
    "Fwd Pkt Len Min",
    "Fwd Pkt Len Mean",
    "Fwd Pkt Len Std",
    "Bwd Pkt Len Max",
    "Bwd Pkt Len Min",
    "Bwd Pkt Len Mean",
    "Bwd Pkt Len Std",
    "Flow Byts/s",
    "Flow Pkts/s",
    "Flow IAT Mean",
    "Flow IAT Std",
    "Flow IAT Max",
    "Flow IAT Min",
    "Fwd IAT Tot",
    "Fwd IAT Mean",
    "Fwd IAT Std",
    "Fwd IAT Max",
    "Fwd IAT Min",
    "Bwd IAT Tot",
    "Bwd IAT Mean",
    "Bwd IAT Std",
    "Bwd IAT Max",
    "Bwd IAT Min",
    "Fwd PSH Flags",
    "Bwd PSH Flags",
    "Fwd URG Flags",
    "Bwd URG Flags",
    "Fwd Header Len",
    "Bwd Header Len",
    "Fwd Pkts/s",
    "Bwd Pkts/s",
    "Pkt Len Min",
    "Pkt Len Max",
    "Pkt Len Mean",
    "Pkt Len Std",
    "Pkt Len Var",
    "FIN Flag Cnt",
    "SYN Flag Cnt",
    "RST Flag Cnt",
    "PSH Flag Cnt",
    "ACK Flag Cnt",
    "URG Flag Cnt",
    "CWE Flag Count",
    "ECE Flag Cnt",
    "Down/Up Ratio",
    "Pkt Size Avg",
    "Fwd Seg Size Avg",
    "Bwd Seg Size Avg",
    "Fwd Byts/b Avg",
    "Fwd Pkts/b Avg",
    "Fwd Blk Rate Avg",
    "Bwd Byts/b Avg",
    "Bwd Pkts/b Avg",
    "Bwd Blk Rate Avg",
    "Subflow Fwd Pkts",
    "Subflow Fwd Byts",
    "Subflow Bwd Pkts",
    "Subflow Bwd Byts",
    "Init Fwd Win Byts",
    "Init Bwd Win Byts",
    "Fwd Act Data Pkts",
    "Fwd Seg Size Min",
    "Active Mean",
    "Active Std",
    "Active Max",
    "Active Min",
    "Idle Mean",
    "Idle Std",
    "Idle Max",
    "Idle Min",
    "Label",
)

#: Word spellings that mean the same thing, mapped to one (see normalise).
_SYNONYMS: Final[Mapping[str, str]] = {
    "source": "src",
    "destination": "dst",
    "dest": "dst",
    "total": "tot",
    "length": "len",
    "packet": "pkts",
    "packets": "pkts",
    "pkt": "pkts",
    "byte": "byts",
    "bytes": "byts",
    "forward": "fwd",
    "backward": "bwd",
    "count": "cnt",
    "flag": "flags",
    "average": "avg",
    "segment": "seg",
    "cwe": "cwr",
}
_DROPPED: Final = frozenset({"of"})
_SEPARATORS = re.compile(r"[\s_./\-]+")

_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 1, 2, 4, 8, 16, 32, 64, 128
#: Normalised column name -> canonical field (or ``label`` for the extra).
CANONICAL: Final[Mapping[str, str]] = {
    "src_ip": "src_ip",
    "dst_ip": "dst_ip",
    "src_port": "src_port",
    "dst_port": "dst_port",
    "protocol": "proto",
    "timestamp": "ts",
    "flow_duration": "duration",
    "tot_fwd_pkts": "src_pkts",
    "tot_bwd_pkts": "dst_pkts",
    "tot_len_fwd_pkts": "src_bytes",
    "tot_len_bwd_pkts": "dst_bytes",
    "label": "label",
}
#: Normalised flag-count column -> the TCP flag it counts.
FLAG_COUNTS: Final[Mapping[str, int]] = {
    "fin_flags_cnt": _FIN,
    "syn_flags_cnt": _SYN,
    "rst_flags_cnt": _RST,
    "psh_flags_cnt": _PSH,
    "ack_flags_cnt": _ACK,
    "urg_flags_cnt": _URG,
    "ece_flags_cnt": _ECE,
    "cwr_flags_cnt": _CWR,
    "fwd_psh_flags": _PSH,
    "bwd_psh_flags": _PSH,
    "fwd_urg_flags": _URG,
    "bwd_urg_flags": _URG,
}
_TIME_FORMATS: Final = (
    "%d/%m/%Y %I:%M:%S %p",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %I:%M %p",
    "%d/%m/%Y %H:%M",
)
_MONTH_FIRST: Final = tuple(f.replace("%d/%m", "%m/%d") for f in _TIME_FORMATS)


def normalise(name: str) -> str:
    """One key for every spelling of a CICFlowMeter column name.

    Lower-cases, splits on spaces, underscores, dots, slashes and dashes,
    splits ``totlen`` into ``tot len``, maps synonyms (``Total`` and ``Tot``,
    ``Length`` and ``Len``, ``Packets``/``Packet``/``Pkt``/``Pkts``,
    ``Forward`` and ``Fwd``, ``Count`` and ``Cnt``, ``Source`` and ``Src``,
    ...), drops ``of`` and joins the words with ``_``. For example
    ``" Total Length of Fwd Packets"``, ``"TotLen Fwd Pkts"`` and
    ``"totlen_fwd_pkts"`` all become ``"tot_len_fwd_pkts"``.
    """
    words: list[str] = []
    for word in _SEPARATORS.split(name.strip().lower().lstrip("\ufeff")):
        if word == "totlen":
            words += ["tot", "len"]
        elif word and word not in _DROPPED:
            words.append(_SYNONYMS.get(word, word))
    return "_".join(words)


class CicFlowMeter:
    """Adapter for CICFlowMeter records, CSV lines or JSON objects."""

    name = "cicflowmeter"

    def __init__(self, columns: Sequence[str] = JAVA_COLUMNS, *, dayfirst: bool = True) -> None:
        """Start with a CSV column order; ``dayfirst`` reads ``dd/mm/yyyy``."""
        self.columns = tuple(columns)
        self.dayfirst = dayfirst

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode CSV lines and/or JSON objects; header lines are skipped."""
        is_json = [v[:1] == b"{" or (v[:1].isspace() and v.lstrip()[:1] == b"{") for v in values]
        if not any(is_json):
            return self._decode_csv(values)
        if all(is_json):
            return self._decode_json(values)
        parts: list[Decoded] = []
        for want_json in (True, False):
            index = [i for i, j in enumerate(is_json) if j == want_json]
            picked = [values[i] for i in index]
            part = self._decode_json(picked) if want_json else self._decode_csv(picked)
            parts.append(renumber(part, np.array(index, dtype=np.int64)))
        return merge(parts)

    def matches(self, sample: bytes) -> bool:
        """A CICFlowMeter header line, CSV line or JSON object."""
        if sample.lstrip()[:1] == b"{":
            decoded = CicFlowMeter().decode([sample])
            return len(decoded.batch) == 1
        text = sample.decode(errors="replace").rstrip("\r\n")
        if _is_header(text):
            return True
        fields = text.split(",")
        if len(fields) not in (len(JAVA_COLUMNS), len(JAVA_COLUMNS) - 1):
            return False
        columns = JAVA_COLUMNS[: len(fields)]
        return len(CicFlowMeter(columns).decode([sample]).batch) == 1

    def read_file(self, path: Path) -> FlowBatch:
        """Read a CICFlowMeter CSV file (its first line is the header).

        Raises:
            ValueError: A line could not be decoded (the first is named).
        """
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        decoded = CicFlowMeter(dayfirst=self.dayfirst).decode(lines)
        if decoded.rejects:
            first = decoded.rejects[0]
            raise ValueError(
                f"{path}: line {first.position + 1}: {first.reason} "
                f"({len(decoded.rejects)} bad lines in all)"
            )
        return decoded.batch

    def _decode_csv(self, values: Sequence[bytes]) -> Decoded:
        """Decode CSV lines, letting header lines change the column order."""
        joined = b"\n".join(values)
        headers = _header_positions(values)
        if not headers:
            return self._decode_lines(values, joined)
        parts: list[Decoded] = []
        start = 0
        for i in [*headers, len(values)]:
            if i > start:
                part = self._decode_lines(values[start:i], None)
                parts.append(renumber(part, np.arange(start, i, dtype=np.int64)))
            if i < len(values):
                self.columns = _header_names(values[i])
                parts.append(Decoded(FlowBatch.empty(), skipped=[i]))
            start = i + 1
        return merge(parts)

    def _decode_lines(self, values: Sequence[bytes], joined: bytes | None) -> Decoded:
        keys = {name: normalise(name) for name in self.columns}
        wanted = [c for c, k in keys.items() if k in CANONICAL or k in FLAG_COUNTS]
        layout = LineFormat(
            self.columns,
            ",",
            ("",),
            "if the file's columns differ, send its header line first",
        )
        columns, rows, reasons = split_lines(values, layout, wanted, joined)

        # Cells that do not parse are flagged on a copy aligned with ``rows``.
        sub = reasons[rows]
        cells: dict[str, Any] = {}
        for name in wanted:
            key = keys[name]
            field = CANONICAL.get(key)
            if field == "ts":
                cells[field] = columns[name]  # parsed as a whole by _times
            elif field in ("src_ip", "dst_ip", "label", "proto"):
                cells[field] = text_values(columns[name])
            else:
                cells[field or key] = parse_floats(columns[name], name.strip(), sub)
        reasons[rows] = sub
        return _finish(cells, len(rows), rows, reasons, self.dayfirst)

    def _decode_json(self, values: Sequence[bytes]) -> Decoded:
        """Decode JSON objects keyed by any of the three spellings."""
        objects, reasons = _json_objects(values)
        rows = np.flatnonzero(pd.isna(reasons))
        kept = [objects[i] for i in rows]
        keys: dict[str, list[str]] = {}
        for key in sorted(set().union(*kept)) if kept else ():
            norm = normalise(key)
            if norm in CANONICAL or norm in FLAG_COUNTS:
                keys.setdefault(CANONICAL.get(norm, norm), []).append(key)
        sub = reasons[rows]
        cells: dict[str, Any] = {}
        for field, names in keys.items():
            column = _object_array([_first(o, names) for o in kept])
            name = normalise(names[0])  # the same for every spelling
            if field in ("src_ip", "dst_ip", "label"):
                cells[field] = _only(column, (str,), name, "text", sub)
            elif field in ("ts", "proto"):
                cells[field] = _only(column, (str, int, float), name, "a scalar", sub)
            else:
                cells[field] = _json_floats(column, name, sub)
        reasons[rows] = sub
        return _finish(cells, len(rows), rows, reasons, self.dayfirst)


def _is_header(text: str) -> bool:
    keys = {normalise(f) for f in text.split(",")}
    return "flow_duration" in keys and "protocol" in keys


def _header_positions(values: Sequence[bytes]) -> list[int]:
    """Positions of header lines (those naming ``Flow Duration`` columns).

    A header starts with a column name and a data line usually with a digit
    (a flow id, an IPv4 address, a port): only the lines that do not are
    searched.
    """
    return [
        i
        for i, v in enumerate(values)
        if not v[:1].isdigit()
        and b"duration" in v.lower()
        and _is_header(v.decode(errors="replace"))
    ]


def _header_names(value: bytes) -> tuple[str, ...]:
    return tuple(value.decode(errors="replace").rstrip("\r\n").split(","))


def _finish(
    cells: dict[str, Any],
    n: int,
    position: IndexArray,
    reasons: ObjectArray,
    dayfirst: bool,
) -> Decoded:
    """Turn parsed cells (by canonical name) into a validated batch."""
    sub = reasons[position]
    nothing = np.full(n, np.nan)
    proto = _protocols(cells.get("proto", np.full(n, None, dtype=object)), sub)
    values: dict[str, npt.NDArray[np.generic]] = {
        "ts": _times(cells.get("ts", np.full(n, None, dtype=object)), dayfirst, sub),
        "src_ip": cells.get("src_ip", np.full(n, None, dtype=object)),
        "dst_ip": cells.get("dst_ip", np.full(n, None, dtype=object)),
        "proto": proto,
        "duration": cells.get("duration", nothing) / 1e6,
        "tcp_flags": _flags(cells, proto, n),
    }
    for field in ("src_port", "dst_port", "src_pkts", "dst_pkts", "src_bytes"):
        values[field] = cells.get(field, nothing)
    values["dst_bytes"] = cells.get("dst_bytes", nothing)
    keep = pd.isna(sub)
    reasons[position] = sub
    extras = {"label": cells["label"][keep]} if "label" in cells else {}
    batch = from_columns(
        {k: v[keep] for k, v in values.items()},
        int(keep.sum()),
        position=position[keep],
        extras=extras,
    )
    decoded = validate(batch)
    rows = np.flatnonzero(pd.notna(reasons))
    early = [Reject(int(i), str(reasons[i])) for i in rows]
    decoded.rejects = sorted(early + decoded.rejects, key=lambda r: r.position)
    return decoded


def _flags(cells: Mapping[str, Any], proto: FloatArray, n: int) -> FloatArray:
    """TCP flags whose count columns are above zero; ``NaN`` unless TCP."""
    counted = [k for k in FLAG_COUNTS if k in cells]
    if not counted:
        return np.full(n, np.nan)
    flags = np.zeros(n, dtype=np.int64)
    for key in counted:
        flags |= np.where(cells[key] > 0, FLAG_COUNTS[key], 0)
    return np.where(proto == 6, flags.astype(np.float64), np.nan)


def _protocols(column: ObjectArray, reasons: ObjectArray) -> FloatArray:
    codes, uniques = pd.factorize(column)
    table = np.array([*(protocol_number(u) for u in uniques), np.nan])
    out = table[codes]
    _flag(column, (codes >= 0) & np.isnan(out), "Protocol", "a protocol", reasons)
    return out


def _as_text(column: Any) -> Any:
    """A pyarrow text column as it is; JSON values (maybe numbers) as text."""
    if hasattr(column, "type"):
        return column
    return _object_array([v if v is None or isinstance(v, str) else str(v) for v in column])


def _times(column: Any, dayfirst: bool, reasons: ObjectArray) -> FloatArray:
    """Epoch seconds from timestamp text (see the module doc)."""
    formats = _TIME_FORMATS if dayfirst else _MONTH_FIRST
    out = parse_times(_as_text(column), formats, epoch=True)
    out = np.where(out > 1e11, out / 1e3, out)  # epoch milliseconds
    values = text_values(column) if hasattr(column, "type") else column
    _flag(values, pd.notna(values) & np.isnan(out), "Timestamp", "a time", reasons)
    return out


def _flag(
    column: ObjectArray,
    bad: npt.NDArray[np.bool_],
    name: str,
    what: str,
    reasons: ObjectArray,
) -> None:
    for i in np.flatnonzero(bad):
        if reasons[i] is None:
            reasons[i] = f"field {name!r} is not {what}: {str(column[i])[:40]!r}"


# --- JSON ---------------------------------------------------------------------

_OBJECT = msgspec.json.Decoder(dict[str, Any])


def _json_objects(
    values: Sequence[bytes],
) -> tuple[list[dict[str, Any]], ObjectArray]:
    """Decode every value as a JSON object; failures get a reason."""
    reasons: ObjectArray = np.full(len(values), None, dtype=object)
    joined = b"\n".join(values)
    if one_object_per_line(joined, len(values)):
        try:
            many = _OBJECT.decode_lines(joined)
            if len(many) == len(values):
                return many, reasons
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    objects: list[dict[str, Any]] = []
    for i, value in enumerate(values):
        try:
            objects.append(_OBJECT.decode(value))
        except msgspec.ValidationError as exc:
            objects.append({})
            reasons[i] = f"invalid CICFlowMeter record: {exc}"
        except msgspec.DecodeError as exc:
            objects.append({})
            reasons[i] = f"not valid JSON: {str(exc)[:200]}"
    return objects, reasons


def _only(
    column: ObjectArray, kinds: tuple[type, ...], name: str, what: str, reasons: ObjectArray
) -> ObjectArray:
    """``column`` with values of other types flagged and replaced by ``None``."""
    wrong = np.array(
        [v is not None and (isinstance(v, bool) or not isinstance(v, kinds)) for v in column],
        dtype=bool,
    )
    if not wrong.any():
        return column
    _flag(column, wrong, name, what, reasons)
    out = column.copy()
    out[wrong] = None
    return out


def _first(record: Mapping[str, Any], names: list[str]) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return None


def _json_floats(column: ObjectArray, name: str, reasons: ObjectArray) -> FloatArray:
    """Numbers from JSON numbers or numeric text; anything else is flagged."""
    ok = np.array([_is_number(v) for v in column], dtype=bool)
    out = np.full(len(column), np.nan)
    for i in np.flatnonzero(ok):
        out[i] = float(column[i])
    _flag(column, ~ok & pd.notna(column), name, "a number", reasons)
    return out


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return False
    return number == number


def _object_array(values: Sequence[object]) -> ObjectArray:
    out: ObjectArray = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


register("cicflowmeter", CicFlowMeter)
