"""goflow2 JSON flow messages (format name ``goflow2``).

goflow2 collects NetFlow v5/v9, IPFIX and sFlow and writes one JSON object
per flow. Version 2 uses snake_case names (``time_flow_start_ns``,
``src_addr``, ``bytes``, ...); version 1 used CamelCase (``TimeFlowStart``,
``SrcAddr``, ``Bytes``, ...). Both are accepted, even within one batch.

Mapping to the canonical schema:

* ``ts`` is the flow's start: ``time_flow_start_ns`` (or
  ``TimeFlowStartNs``, ``TimeFlowStartMs``, ``TimeFlowStart`` in seconds);
  where the exporter gave no start (0 or absent, as with sFlow) the time
  goflow2 received the message stands in. ``duration`` is end minus start
  when both are known.
* Exporters count one direction per record, so ``bytes`` and ``packets``
  go to ``src_bytes`` and ``src_pkts``; ``dst_bytes`` and ``dst_pkts`` are
  missing.
* Counts are multiplied by ``sampling_rate`` (0 or absent means 1, i.e.
  unsampled), which is kept in the ``sampling_rate`` column.
* ``proto`` is a number, or a name as goflow2 v2 renders it (``"TCP"``);
  ``tcp_flags`` is kept (its low eight bits); there is no ``service`` or
  ``conn_state``.
* Records whose ``etype`` says they are not IP (ARP, for instance) are
  skipped: they carry no addresses to score.
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

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Count = Annotated[float, msgspec.Meta(ge=0)]
#: EtherTypes of IP packets, as numbers and as goflow2 v2 names them.
IP_ETYPES: Final = frozenset({0x0800, 0x86DD, "IPv4", "IPv6"})


class GoflowRecord(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Wire form of one goflow2 JSON flow, both spellings side by side.

    The attributes ending in ``_v1`` read goflow2 v1's CamelCase keys.
    """

    time_received_ns: Count | None = None
    time_flow_start_ns: Count | None = None
    time_flow_end_ns: Count | None = None
    sampling_rate: Count | None = None
    octets: Count | None = msgspec.field(default=None, name="bytes")
    packets: Count | None = None
    src_addr: str | None = None
    dst_addr: str | None = None
    etype: int | str | None = None
    proto: int | str | None = None
    src_port: Port | None = None
    dst_port: Port | None = None
    tcp_flags: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)] | None = None

    time_received_v1: Count | None = msgspec.field(default=None, name="TimeReceived")
    time_received_ns_v1: Count | None = msgspec.field(default=None, name="TimeReceivedNs")
    start_v1: Count | None = msgspec.field(default=None, name="TimeFlowStart")
    end_v1: Count | None = msgspec.field(default=None, name="TimeFlowEnd")
    start_ms_v1: Count | None = msgspec.field(default=None, name="TimeFlowStartMs")
    end_ms_v1: Count | None = msgspec.field(default=None, name="TimeFlowEndMs")
    start_ns_v1: Count | None = msgspec.field(default=None, name="TimeFlowStartNs")
    end_ns_v1: Count | None = msgspec.field(default=None, name="TimeFlowEndNs")
    sampling_rate_v1: Count | None = msgspec.field(default=None, name="SamplingRate")
    octets_v1: Count | None = msgspec.field(default=None, name="Bytes")
    packets_v1: Count | None = msgspec.field(default=None, name="Packets")
    src_addr_v1: str | None = msgspec.field(default=None, name="SrcAddr")
    dst_addr_v1: str | None = msgspec.field(default=None, name="DstAddr")
    etype_v1: int | str | None = msgspec.field(default=None, name="Etype")
    proto_v1: int | str | None = msgspec.field(default=None, name="Proto")
    src_port_v1: Port | None = msgspec.field(default=None, name="SrcPort")
    dst_port_v1: Port | None = msgspec.field(default=None, name="DstPort")
    tcp_flags_v1: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)] | None = msgspec.field(
        default=None, name="TCPFlags"
    )


_ONE = msgspec.json.Decoder(GoflowRecord)


class Goflow2Json:
    """Adapter for goflow2's JSON output (v2 snake_case or v1 CamelCase)."""

    name = "goflow2"

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode a micro-batch; non-IP records are skipped."""
        records, rejects = _decode_all(values)
        index = [i for i, r in enumerate(records) if r is not None]
        decoded = _to_flows([r for r in records if r is not None], np.array(index, dtype=np.int64))
        decoded.rejects = sorted(rejects + decoded.rejects, key=lambda r: r.position)
        return decoded

    def matches(self, sample: bytes) -> bool:
        """A JSON object with goflow2's address and counter keys."""
        try:
            record = _ONE.decode(sample)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        address = record.src_addr or record.src_addr_v1
        count = record.octets if record.octets is not None else record.octets_v1
        return address is not None and count is not None

    def read_file(self, path: Path) -> FlowBatch:
        """Read a file of goflow2 JSON lines.

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
) -> tuple[list[GoflowRecord | None], list[Reject]]:
    """Decode every value; rejected ones are ``None``, with a reason."""
    joined = b"\n".join(values)
    if one_object_per_line(joined, len(values)):
        try:
            many = _ONE.decode_lines(joined)
            if len(many) == len(values):
                return list(many), []
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    records: list[GoflowRecord | None] = []
    rejects: list[Reject] = []
    for i, value in enumerate(values):
        try:
            records.append(_ONE.decode(value))
        except msgspec.ValidationError as exc:
            records.append(None)
            rejects.append(Reject(i, f"invalid goflow2 record: {exc}"))
        except msgspec.DecodeError as exc:
            records.append(None)
            rejects.append(Reject(i, f"not valid JSON: {str(exc)[:200]}"))
    return records, rejects


def _to_flows(records: list[GoflowRecord], position: IndexArray) -> Decoded:
    """Turn decoded records into a validated batch (non-IP ones skipped)."""
    raw = _Fields(records)

    def pick(name: str) -> ObjectArray:
        """The v2 value, or the v1 one where v2's is absent."""
        first, second = raw[name], raw[f"{name}_v1"]
        return np.where(pd.isna(first), second, first)

    etype = pick("etype")
    is_ip = np.array([e is None or e in IP_ETYPES for e in etype], dtype=bool)
    start = _first_time(
        (raw["time_flow_start_ns"], 1e-9),
        (raw["start_ns_v1"], 1e-9),
        (raw["start_ms_v1"], 1e-3),
        (raw["start_v1"], 1.0),
    )
    end = _first_time(
        (raw["time_flow_end_ns"], 1e-9),
        (raw["end_ns_v1"], 1e-9),
        (raw["end_ms_v1"], 1e-3),
        (raw["end_v1"], 1.0),
    )
    received = _first_time(
        (raw["time_received_ns"], 1e-9),
        (raw["time_received_ns_v1"], 1e-9),
        (raw["time_received_v1"], 1.0),
    )
    rate = _floats(pick("sampling_rate"))
    rate = np.where(np.isnan(rate) | (rate == 0), 1.0, rate)
    flags = _floats(pick("tcp_flags"))

    values: dict[str, npt.NDArray[np.generic]] = {
        "ts": np.where(np.isnan(start), received, start),
        "src_ip": pick("src_addr"),
        "dst_ip": pick("dst_addr"),
        "src_port": _floats(pick("src_port")),
        "dst_port": _floats(pick("dst_port")),
        "proto": _protocols(pick("proto")),
        "duration": end - start,
        "src_bytes": _floats(pick("octets")) * rate,
        "src_pkts": _floats(pick("packets")) * rate,
        "tcp_flags": np.where(np.isnan(flags), np.nan, np.fmod(flags, 256)),
        "sampling_rate": rate,
    }
    batch = from_columns(
        {k: v[is_ip] for k, v in values.items()},
        int(is_ip.sum()),
        position=position[is_ip],
    )
    decoded = validate(batch)
    decoded.skipped = [int(p) for p in position[~is_ip]]
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


def _floats(column: ObjectArray) -> FloatArray:
    return column.astype(np.float64)


def _first_time(*candidates: tuple[ObjectArray, float]) -> FloatArray:
    """Seconds from the first candidate that is given and non-zero per row."""
    out = np.full(candidates[0][0].shape[0], np.nan)
    for column, scale in candidates:
        value = _floats(column) * scale
        usable = np.isnan(out) & (value > 0)
        out[usable] = value[usable]
    return out


def _protocols(column: ObjectArray) -> FloatArray:
    codes, uniques = pd.factorize(column)
    table = np.array([*(protocol_number(u) for u in uniques), np.nan])
    return table[codes]


register("goflow2", Goflow2Json)
