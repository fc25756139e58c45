"""nProbe JSON flow export (format name ``nprobe``).

nProbe writes one JSON object per flow. With ``--json-labels`` the keys are
the template element names (``IPV4_SRC_ADDR``, ``IN_BYTES``, ...); without
it they are the NetFlow v9 element ids as strings (``"8"``, ``"1"``, ...).
Both forms are read, for the standard elements below; nProbe's private
elements (such as ``L7_PROTO_NAME``) are read by name only.

Key (element id) -> canonical field:

* ``IPV4_SRC_ADDR`` (8) or ``IPV6_SRC_ADDR`` (27) -> ``src_ip``
* ``IPV4_DST_ADDR`` (12) or ``IPV6_DST_ADDR`` (28) -> ``dst_ip``
* ``L4_SRC_PORT`` (7), ``L4_DST_PORT`` (11) -> ``src_port``, ``dst_port``
* ``PROTOCOL`` (4) -> ``proto``
* ``IN_BYTES`` (1), ``IN_PKTS`` (2) -> ``src_bytes``, ``src_pkts``
* ``OUT_BYTES`` (23), ``OUT_PKTS`` (24) -> ``dst_bytes``, ``dst_pkts``
* ``TCP_FLAGS`` (6) -> ``tcp_flags``
* ``FLOW_START_MILLISECONDS`` (152), else ``FIRST_SWITCHED`` (22) -> ``ts``
* ``FLOW_END_MILLISECONDS`` (153), else ``LAST_SWITCHED`` (21) -> the end
* ``FLOW_DURATION_MILLISECONDS`` -> ``duration`` (else end minus start)
* ``L7_PROTO_NAME`` -> ``service``

``IN_*`` counts the source-to-destination direction and ``OUT_*`` the
reverse. ``FIRST_SWITCHED`` and ``LAST_SWITCHED`` are epoch seconds in
nProbe's JSON. Numbers may arrive as JSON numbers or as numeric text. Counts
are taken as nProbe reports them (not rescaled for sampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Final

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from features.formats import register
from features.formats.base import Decoded, one_object_per_line, validate
from features.records import (
    FloatArray,
    FlowBatch,
    IndexArray,
    ObjectArray,
    Reject,
    from_columns,
    protocol_number,
)

#: A number, or numeric text (nProbe writes either, by version and field).
Number = float | str
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)] | str


class NprobeRecord(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Wire form of one nProbe JSON flow; ``*_id`` attributes read id keys."""

    src_v4: str | None = msgspec.field(default=None, name="IPV4_SRC_ADDR")
    dst_v4: str | None = msgspec.field(default=None, name="IPV4_DST_ADDR")
    src_v6: str | None = msgspec.field(default=None, name="IPV6_SRC_ADDR")
    dst_v6: str | None = msgspec.field(default=None, name="IPV6_DST_ADDR")
    src_port: Port | None = msgspec.field(default=None, name="L4_SRC_PORT")
    dst_port: Port | None = msgspec.field(default=None, name="L4_DST_PORT")
    proto: Number | None = msgspec.field(default=None, name="PROTOCOL")
    in_bytes: Number | None = msgspec.field(default=None, name="IN_BYTES")
    in_pkts: Number | None = msgspec.field(default=None, name="IN_PKTS")
    out_bytes: Number | None = msgspec.field(default=None, name="OUT_BYTES")
    out_pkts: Number | None = msgspec.field(default=None, name="OUT_PKTS")
    tcp_flags: Number | None = msgspec.field(default=None, name="TCP_FLAGS")
    start_ms: Number | None = msgspec.field(default=None, name="FLOW_START_MILLISECONDS")
    end_ms: Number | None = msgspec.field(default=None, name="FLOW_END_MILLISECONDS")
    first: Number | None = msgspec.field(default=None, name="FIRST_SWITCHED")
    last: Number | None = msgspec.field(default=None, name="LAST_SWITCHED")
    duration_ms: Number | None = msgspec.field(default=None, name="FLOW_DURATION_MILLISECONDS")
    l7_name: str | None = msgspec.field(default=None, name="L7_PROTO_NAME")

    src_v4_id: str | None = msgspec.field(default=None, name="8")
    dst_v4_id: str | None = msgspec.field(default=None, name="12")
    src_v6_id: str | None = msgspec.field(default=None, name="27")
    dst_v6_id: str | None = msgspec.field(default=None, name="28")
    src_port_id: Port | None = msgspec.field(default=None, name="7")
    dst_port_id: Port | None = msgspec.field(default=None, name="11")
    proto_id: Number | None = msgspec.field(default=None, name="4")
    in_bytes_id: Number | None = msgspec.field(default=None, name="1")
    in_pkts_id: Number | None = msgspec.field(default=None, name="2")
    out_bytes_id: Number | None = msgspec.field(default=None, name="23")
    out_pkts_id: Number | None = msgspec.field(default=None, name="24")
    tcp_flags_id: Number | None = msgspec.field(default=None, name="6")
    start_ms_id: Number | None = msgspec.field(default=None, name="152")
    end_ms_id: Number | None = msgspec.field(default=None, name="153")
    first_id: Number | None = msgspec.field(default=None, name="22")
    last_id: Number | None = msgspec.field(default=None, name="21")


_ONE = msgspec.json.Decoder(NprobeRecord)
_FIELDS: Final = NprobeRecord.__struct_fields__
#: The JSON key each attribute reads, for reasons.
_KEYS: Final = dict(
    zip(
        _FIELDS,
        (f.encode_name for f in msgspec.structs.fields(NprobeRecord)),
        strict=True,
    )
)


class NprobeJson:
    """Adapter for nProbe's JSON export (labels or element ids)."""

    name = "nprobe"

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode a micro-batch, isolating bad records only if the batch fails."""
        records, rejects = _decode_all(values)
        index = [i for i, r in enumerate(records) if r is not None]
        decoded = _to_flows([r for r in records if r is not None], np.array(index, dtype=np.int64))
        decoded.rejects = sorted(rejects + decoded.rejects, key=lambda r: r.position)
        return decoded

    def matches(self, sample: bytes) -> bool:
        """A JSON object with nProbe's source address key (label or id)."""
        try:
            r = _ONE.decode(sample)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        return any(v is not None for v in (r.src_v4, r.src_v6, r.src_v4_id, r.src_v6_id))

    def read_file(self, path: Path) -> FlowBatch:
        """Read a file of nProbe JSON lines.

        Raises:
            ValueError: A line could not be decoded (the first is named).
        """
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        decoded = self.decode(lines)
        if decoded.rejects:
            first = decoded.rejects[0]
            raise ValueError(
                f"{path}: line {first.position + 1}: {first.reason} "
                f"({len(decoded.rejects)} bad lines in all)"
            )
        return decoded.batch


def _decode_all(
    values: Sequence[bytes],
) -> tuple[list[NprobeRecord | None], list[Reject]]:
    """Decode every value; rejected ones are ``None``, with a reason."""
    joined = b"\n".join(values)
    if one_object_per_line(joined, len(values)):
        try:
            many = _ONE.decode_lines(joined)
            if len(many) == len(values):
                return list(many), []
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    records: list[NprobeRecord | None] = []
    rejects: list[Reject] = []
    for i, value in enumerate(values):
        try:
            records.append(_ONE.decode(value))
        except msgspec.ValidationError as exc:
            records.append(None)
            rejects.append(Reject(i, f"invalid nProbe record: {exc}"))
        except msgspec.DecodeError as exc:
            records.append(None)
            rejects.append(Reject(i, f"not valid JSON: {str(exc)[:200]}"))
    return records, rejects


def _to_flows(records: list[NprobeRecord], position: IndexArray) -> Decoded:
    """Turn decoded records into a validated batch."""
    n = len(records)
    raw = _Fields(records)
    reasons: ObjectArray = np.full(n, None, dtype=object)

    def number(*names: str) -> FloatArray:
        """The first of ``names`` (label or id form) that is given, as floats."""
        out = np.full(n, np.nan)
        for name in names:
            for attr in (name, f"{name}_id"):
                if attr in _FIELDS:
                    value = _numbers(raw[attr], _KEYS[attr], reasons)
                    out = np.where(np.isnan(out), value, out)
        return out

    def text(*names: str) -> ObjectArray:
        out: ObjectArray = np.full(n, None, dtype=object)
        for name in names:
            for attr in (name, f"{name}_id"):
                if attr in _FIELDS:
                    out = np.where(pd.isna(out), raw[attr], out)
        return out

    start = number("start_ms") / 1e3
    start = np.where(np.isnan(start), number("first"), start)
    end = number("end_ms") / 1e3
    end = np.where(np.isnan(end), number("last"), end)
    duration = number("duration_ms") / 1e3
    values: dict[str, npt.NDArray[np.generic]] = {
        "ts": start,
        "src_ip": text("src_v4", "src_v6"),
        "dst_ip": text("dst_v4", "dst_v6"),
        "src_port": number("src_port"),
        "dst_port": number("dst_port"),
        "proto": _protocols(text("proto"), reasons),
        "duration": np.where(np.isnan(duration), end - start, duration),
        "src_bytes": number("in_bytes"),
        "dst_bytes": number("out_bytes"),
        "src_pkts": number("in_pkts"),
        "dst_pkts": number("out_pkts"),
        "tcp_flags": number("tcp_flags"),
        "service": raw["l7_name"],
    }
    keep = pd.isna(reasons)
    batch = from_columns(
        {k: v[keep] for k, v in values.items()},
        int(keep.sum()),
        position=position[keep],
    )
    decoded = validate(batch)
    early = [Reject(int(position[i]), str(reasons[i])) for i in np.flatnonzero(~keep)]
    decoded.rejects = early + decoded.rejects
    return decoded


class _Fields:
    """Column access to a list of structs: ``fields["name"]`` is an array."""

    def __init__(self, rows: Sequence[msgspec.Struct]) -> None:
        self.rows = rows
        self._cache: dict[str, ObjectArray] = {}

    def __getitem__(self, name: str) -> ObjectArray:
        out = self._cache.get(name)
        if out is None:
            out = np.empty(len(self.rows), dtype=object)
            out[:] = list(map(attrgetter(name), self.rows))
            self._cache[name] = out
        return out


def _numbers(column: ObjectArray, key: str, reasons: ObjectArray) -> FloatArray:
    """Numbers from JSON numbers or numeric text; other text is flagged."""
    try:
        out: FloatArray = column.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        codes, uniques = pd.factorize(column)
        out = np.array([*(_float_or_nan(u) for u in uniques), np.nan])[codes]
    _flag(column, np.isnan(out) & pd.notna(column), key, "a number", reasons)
    return out


def _flag(
    column: ObjectArray,
    bad: npt.NDArray[np.bool_],
    key: str,
    what: str,
    reasons: ObjectArray,
) -> None:
    for i in np.flatnonzero(bad):
        if reasons[i] is None:
            reasons[i] = f"field {key!r} is not {what}: {str(column[i])[:40]!r}"


def _float_or_nan(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _protocols(column: ObjectArray, reasons: ObjectArray) -> FloatArray:
    codes, uniques = pd.factorize(column)
    out = np.array([*(protocol_number(u) for u in uniques), np.nan])[codes]
    _flag(column, (codes >= 0) & np.isnan(out), "PROTOCOL", "a protocol", reasons)
    return out


register("nprobe", NprobeJson)
