"""One JSON record per packet (format name ``packet``).

The record, as ``netfraud replay --pcap`` publishes it::

    {"ts": 1767225600.250113, "src_ip": "10.0.0.5", "dst_ip": "93.184.216.34",
     "src_port": 51514, "dst_port": 443, "proto": 6, "length": 1514,
     "tcp_flags": 24}

Fields:
    ts: Capture time in epoch seconds (a number; an RFC 3339 string is
        accepted too).
    src_ip, dst_ip: IPv4 or IPv6 addresses of the IP header.
    src_port, dst_port: TCP or UDP ports; ``null`` for other transports.
    proto: IANA protocol number, or a name (``tcp``, ``udp``, ``icmp``...).
    length: Bytes on the wire (the frame's original length, link header
        included), not just the captured part.
    tcp_flags: The TCP flag byte (FIN=1, SYN=2, RST=4, PSH=8, ACK=16,
        URG=32, ECE=64, CWR=128); ``null`` for other transports.

``ts``, ``src_ip``, ``dst_ip``, ``proto`` and ``length`` are required. A
``label`` field, when present, is carried along and never becomes a feature.
Unknown fields are ignored.

Mapping into the canonical flow schema (each packet is a one-packet,
one-way "flow", so that the shared validation and the alert builder apply
unchanged):

============  ===========================================
canonical     from the packet record
============  ===========================================
ts            ``ts``
src_ip        ``src_ip``
dst_ip        ``dst_ip``
src_port      ``src_port`` (``NaN`` when null)
dst_port      ``dst_port`` (``NaN`` when null)
proto         ``proto``, names mapped to numbers
src_bytes     ``length``
src_pkts      1
dst_bytes     0 (nothing travels the other way in one packet)
dst_pkts      0
duration      0
tcp_flags     ``tcp_flags`` (``NaN`` when null)
service       missing (no payload inspection)
conn_state    missing (a packet has no connection outcome)
============  ===========================================

What makes packets useful to a model is their context: the damped per-host,
per-pair and per-socket statistics of :mod:`features.packets`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from features.formats import register
from features.formats.base import Decoded, validate
from features.records import FlowBatch, IndexArray, Reject, from_columns, protocol_number

Number = int | float
#: What a row of this format is, for the vectorizer and the model bundle.
RECORD_KIND = "packet"
PACKET_FIELDS = ("ts", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "length", "tcp_flags")


class PacketRecord(msgspec.Struct, frozen=True, gc=False):
    """Wire form of the packet record."""

    ts: Number | str
    src_ip: str
    dst_ip: str
    proto: int | str
    length: Number
    src_port: int | None = None
    dst_port: int | None = None
    tcp_flags: int | None = None
    label: str | None = None


_ONE = msgspec.json.Decoder(PacketRecord)
_MANY = msgspec.json.Decoder(list[PacketRecord])


class PacketJson:
    """Adapter for packet records."""

    name = "packet"
    record = RECORD_KIND

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode a micro-batch in one parse, isolating bad records only if it fails."""
        records, rejects = _decode_all(values)
        decoded = validate(_to_batch(records))
        decoded.rejects = rejects + decoded.rejects
        return decoded

    def matches(self, sample: bytes) -> bool:
        """A JSON object with the address fields and a ``length``."""
        try:
            _ONE.decode(sample)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        return True

    def read_file(self, path: Path) -> FlowBatch:
        """Read JSON lines, or CSV / Parquet with the record's field names.

        Captures (``.pcap``, ``.pcapng``) are read by
        :mod:`detector.tools.pcap`, which produces the same rows.

        Raises:
            ValueError: A line does not decode or validate (the first is named).
        """
        suffix = path.suffix.lower()
        if suffix in {".jsonl", ".json", ".ndjson"}:
            lines = [line for line in path.read_bytes().splitlines() if line.strip()]
            decoded = self.decode(lines)
            if decoded.rejects:
                first = decoded.rejects[0]
                raise ValueError(
                    f"{path}: line {first.position + 1}: {first.reason} "
                    f"({len(decoded.rejects)} bad lines in all)"
                )
            return decoded.batch
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        return _frame_to_batch(frame)


def packet_batch(
    values: Mapping[str, Sequence[object] | npt.NDArray[Any]],
    position: IndexArray | None = None,
    extras: Mapping[str, Sequence[object] | npt.NDArray[Any]] | None = None,
) -> FlowBatch:
    """Map packet columns (names of :data:`PACKET_FIELDS`) onto canonical flows.

    Args:
        values: One column per packet field, all of the same length; ports
            and flags may hold ``None`` or ``NaN``.
        position: Input index of each row; ``0..n-1`` when omitted.
        extras: Non-feature columns (``label``) to carry along.

    Returns:
        The unvalidated batch (see the module docstring for the mapping).
    """
    n = len(values["ts"])
    columns = {name: values[name] for name in PACKET_FIELDS if name != "length"}
    columns["src_bytes"] = values["length"]
    columns["src_pkts"] = np.ones(n)
    for name in ("dst_bytes", "dst_pkts", "duration"):
        columns[name] = np.zeros(n)
    return from_columns(columns, n, position=position, extras=extras)


def _decode_all(values: Sequence[bytes]) -> tuple[list[PacketRecord | None], list[Reject]]:
    """Decode every value; ``None`` stands in for each rejected one."""
    # One parse of the whole batch is several times faster than one per record;
    # the framing is trusted only when every value is a single object.
    if all(v[:1] == b"{" and v[-1:] == b"}" for v in values):
        try:
            many = _MANY.decode(b"[" + b",".join(values) + b"]")
            if len(many) == len(values):
                return list(many), []
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    records: list[PacketRecord | None] = []
    rejects: list[Reject] = []
    for i, value in enumerate(values):
        try:
            records.append(_ONE.decode(value))
        except msgspec.ValidationError as exc:
            records.append(None)
            rejects.append(Reject(i, f"invalid packet record: {exc}"))
        except (msgspec.DecodeError, TypeError) as exc:
            records.append(None)
            rejects.append(Reject(i, f"not valid JSON: {str(exc)[:200]}"))
    return records, rejects


def _to_batch(records: list[PacketRecord | None]) -> FlowBatch:
    position = np.array([i for i, r in enumerate(records) if r is not None], np.int64)
    good = [r for r in records if r is not None]
    values: dict[str, Sequence[object] | npt.NDArray[np.generic]] = {
        name: [getattr(r, name) for r in good] for name in PACKET_FIELDS
    }
    values["ts"] = [_seconds(r.ts) for r in good]
    values["proto"] = [p if isinstance(p, int) else protocol_number(p) for p in values["proto"]]
    labels = [r.label for r in good]
    extras = {"label": labels} if any(v is not None for v in labels) else None
    return packet_batch(values, position, extras)


def _seconds(ts: Number | str) -> float:
    if not isinstance(ts, str):
        return float(ts)
    try:
        return float(pd.Timestamp(ts).timestamp())
    except ValueError:
        return float("nan")  # reported as a missing 'ts'


def _frame_to_batch(frame: pd.DataFrame) -> FlowBatch:
    missing = [f for f in ("ts", "src_ip", "dst_ip", "proto", "length") if f not in frame]
    if missing:
        raise ValueError(f"missing required columns: {', '.join(missing)}")
    values: dict[str, Sequence[object] | npt.NDArray[np.generic]] = {}
    for name in PACKET_FIELDS:
        if name in ("src_ip", "dst_ip"):
            values[name] = frame[name].astype(object).to_numpy()
        elif name == "proto" and not pd.api.types.is_numeric_dtype(frame[name]):
            values[name] = frame[name].map(protocol_number).to_numpy(np.float64)
        elif name == "ts" and not pd.api.types.is_numeric_dtype(frame[name]):
            stamps = pd.to_datetime(frame[name], utc=True).astype("int64") / 1e9
            values[name] = stamps.to_numpy(np.float64)
        elif name in frame:
            values[name] = pd.to_numeric(frame[name]).to_numpy(np.float64)
        else:
            values[name] = np.full(len(frame), np.nan)
    extras = {"label": frame["label"].astype(str).to_numpy(object)} if "label" in frame else None
    return validate(packet_batch(values, extras=extras)).batch


register("packet", PacketJson)
