"""Suricata EVE JSON events (format name ``suricata``).

One EVE object per message. Only ``"event_type": "flow"`` events describe
flows; every other event type (``alert``, ``dns``, ``tls``, ``stats``, ...)
is *skipped*: neither scored nor dead-lettered.

Mapping to the canonical schema:

* ``ts`` is ``flow.start`` (the flow's first packet), or the event's
  ``timestamp`` when the start is absent; ``duration`` is
  ``flow.end - flow.start`` (``flow.age``, whole seconds, as a fallback).
* ``src_*`` is the client side (``src_ip``, ``src_port``,
  ``flow.bytes_toserver``, ``flow.pkts_toserver``); ``dst_*`` the server
  side (``dest_*``, ``*_toclient``). Suricata counts whole packets, headers
  included.
* ``proto`` from the protocol name (``TCP``, ``UDP``, ``ICMP``,
  ``IPv6-ICMP``) or number; ``service`` is ``app_proto``, except Suricata's
  ``failed`` and ``unknown``, which mean none.
* ``tcp_flags`` is ``tcp.tcp_flags``, a hexadecimal string (``"1b"``).
* ``conn_state`` is Zeek's state, derived where the meaning is clear from
  the per-direction flags ``tcp.tcp_flags_ts`` (client) and
  ``tcp.tcp_flags_tc`` (server):

  - no client SYN: ``OTH`` (picked up mid-stream);
  - client SYN, nothing back: ``S0``; answered by RST only: ``REJ``;
  - handshake, then RST from the client: ``RSTO``, from the server ``RSTR``;
  - handshake and FIN both ways: ``SF``; FIN from the client only: ``S2``,
    from the server only: ``S3``; no FIN: ``S1``.

  UDP and other transports are ``SF`` with packets both ways and ``S0``
  without a reply; ICMP is ``OTH``, as Zeek logs it. Without the flags
  (TCP logging off) the state is left out.
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
from features.formats.zeek import parse_times
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
_FIN, _SYN, _RST = 1, 2, 4


class EveFlow(msgspec.Struct, frozen=True, gc=False):
    """The ``flow`` object of an EVE event (the fields used here)."""

    pkts_toserver: float | None = None
    pkts_toclient: float | None = None
    bytes_toserver: float | None = None
    bytes_toclient: float | None = None
    start: str | None = None
    end: str | None = None
    age: float | None = None


class EveTcp(msgspec.Struct, frozen=True, gc=False):
    """The ``tcp`` object of a flow event (flags as hexadecimal text)."""

    tcp_flags: str | None = None
    tcp_flags_ts: str | None = None
    tcp_flags_tc: str | None = None


class EveEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Wire form of one EVE event (the fields a flow event needs)."""

    event_type: str
    timestamp: str | None = None
    src_ip: str | None = None
    src_port: Port | None = None
    dest_ip: str | None = None
    dest_port: Port | None = None
    proto: str | int | None = None
    app_proto: str | None = None
    flow: EveFlow | None = None
    tcp: EveTcp | None = None


class _EventType(msgspec.Struct, frozen=True, gc=False):
    event_type: str


_ONE = msgspec.json.Decoder(EveEvent)
_HEAD = msgspec.json.Decoder(_EventType)
_NO_FLOW: Final = EveFlow()
_NO_TCP: Final = EveTcp()
_NO_SERVICE: Final = frozenset({"failed", "unknown"})


class SuricataEve:
    """Adapter for Suricata EVE JSON; flow events become flows."""

    name = "suricata"

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode a micro-batch; non-flow events are skipped."""
        events, rejects = _decode_all(values)
        flows: list[EveEvent] = []
        index: list[int] = []
        skipped: list[int] = []
        for i, event in enumerate(events):
            if event is None:
                continue
            if event.event_type == "flow":
                flows.append(event)
                index.append(i)
            else:
                skipped.append(i)
        decoded = _to_flows(flows, np.array(index, dtype=np.int64))
        decoded.rejects = sorted(rejects + decoded.rejects, key=lambda r: r.position)
        decoded.skipped = skipped
        return decoded

    def matches(self, sample: bytes) -> bool:
        """An EVE object: JSON with ``event_type`` and a ``timestamp``."""
        try:
            event = _ONE.decode(sample)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        return event.timestamp is not None

    def read_file(self, path: Path) -> FlowBatch:
        """Read an ``eve.json`` file; its flow events become the batch.

        Raises:
            ValueError: A flow event could not be decoded (the first is named).
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


#: Stands in for an event that failed full decoding but is not a flow.
_SKIP: Final = EveEvent(event_type="")


def _decode_all(values: Sequence[bytes]) -> tuple[list[EveEvent | None], list[Reject]]:
    """Decode every event; rejected ones are ``None``, with a reason."""
    joined = b"\n".join(values)
    if one_object_per_line(joined, len(values)):
        try:
            many = _ONE.decode_lines(joined)
            if len(many) == len(values):
                return list(many), []
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    events: list[EveEvent | None] = []
    rejects: list[Reject] = []
    for i, value in enumerate(values):
        event, reason = _decode_one(value)
        events.append(event)
        if reason is not None:
            rejects.append(Reject(i, reason))
    return events, rejects


def _decode_one(value: bytes) -> tuple[EveEvent | None, str | None]:
    """Decode one event; a non-flow event that fails is skipped, not rejected."""
    try:
        return _ONE.decode(value), None
    except msgspec.ValidationError as exc:
        error = f"invalid EVE flow event: {exc}"
    except msgspec.DecodeError as exc:
        return None, f"not valid JSON: {_clip(str(exc))}"
    try:
        head = _HEAD.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, error
    return (None, error) if head.event_type == "flow" else (_SKIP, None)


def _to_flows(events: list[EveEvent], position: IndexArray) -> Decoded:
    """Turn flow events into a validated batch."""
    n = len(events)
    reasons: ObjectArray = np.full(n, None, dtype=object)
    top = _Fields(events)
    flow = _Fields([e.flow or _NO_FLOW for e in events])
    tcp = _Fields([e.tcp or _NO_TCP for e in events])

    start = _times(flow["start"], "flow.start", reasons)
    end = _times(flow["end"], "flow.end", reasons)
    stamp = _times(top["timestamp"], "timestamp", reasons)
    proto = _protocols(top["proto"])
    flags = _hex(tcp["tcp_flags"], "tcp.tcp_flags", reasons)
    client = _hex(tcp["tcp_flags_ts"], "tcp.tcp_flags_ts", reasons)
    server = _hex(tcp["tcp_flags_tc"], "tcp.tcp_flags_tc", reasons)
    server_pkts = flow.number("pkts_toclient")

    values: dict[str, npt.NDArray[np.generic]] = {
        "ts": np.where(np.isnan(start), stamp, start),
        "src_ip": top["src_ip"],
        "dst_ip": top["dest_ip"],
        "src_port": top.number("src_port"),
        "dst_port": top.number("dest_port"),
        "proto": proto,
        "duration": np.where(np.isnan(end - start), flow.number("age"), end - start),
        "src_bytes": flow.number("bytes_toserver"),
        "dst_bytes": flow.number("bytes_toclient"),
        "src_pkts": flow.number("pkts_toserver"),
        "dst_pkts": server_pkts,
        "tcp_flags": np.where(np.isnan(flags), np.fmax(client, server), flags),
        "service": _services(top["app_proto"]),
        "conn_state": conn_states(proto, client, server, server_pkts),
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


def conn_states(
    proto: FloatArray, client: FloatArray, server: FloatArray, server_pkts: FloatArray
) -> ObjectArray:
    """Zeek ``conn_state`` from per-direction TCP flags (see the module doc).

    Args:
        proto: IANA protocol numbers.
        client: Flags sent by the client (``NaN`` if not logged).
        server: Flags sent by the server (``NaN`` if not logged).
        server_pkts: Packets sent by the server.

    Returns:
        One state per row, or ``None`` where it cannot be told.
    """
    c = np.nan_to_num(client).astype(np.int64)
    s = np.nan_to_num(server).astype(np.int64)
    tcp = (proto == 6) & ~np.isnan(client)
    syn, fin, rst = (c & _SYN) > 0, (c & _FIN) > 0, (c & _RST) > 0
    s_syn, s_fin, s_rst = (s & _SYN) > 0, (s & _FIN) > 0, (s & _RST) > 0
    replied = ~np.isnan(server) & (s != 0)
    tcp_states = np.select(
        [
            ~syn,
            ~replied,
            ~s_syn & s_rst,
            s_syn & rst,
            s_syn & s_rst,
            s_syn & fin & s_fin,
            s_syn & fin,
            s_syn & s_fin,
            s_syn,
        ],
        ["OTH", "S0", "REJ", "RSTO", "RSTR", "SF", "S2", "S3", "S1"],
        default="",
    )
    other = np.where(np.nan_to_num(server_pkts) > 0, "SF", "S0")
    icmp = (proto == 1) | (proto == 58)
    states = np.where(tcp, tcp_states, np.where(icmp, "OTH", other)).astype(object)
    unknown = ((proto == 6) & ~tcp) | np.isnan(proto) | (states == "")
    states[unknown] = None
    return states


class _Fields:
    """Column access to a list of structs: ``fields["name"]`` is an array."""

    def __init__(self, rows: Sequence[msgspec.Struct]) -> None:
        self.rows = rows

    def __getitem__(self, name: str) -> ObjectArray:
        out: ObjectArray = np.empty(len(self.rows), dtype=object)
        out[:] = list(map(attrgetter(name), self.rows))
        return out

    def number(self, name: str) -> FloatArray:
        return np.array(list(map(attrgetter(name), self.rows)), dtype=np.float64)


def _times(column: ObjectArray, name: str, reasons: ObjectArray) -> FloatArray:
    """Epoch seconds from ISO 8601 text; unparsable text is flagged."""
    out = parse_times(column)
    for i in np.flatnonzero(pd.notna(column) & np.isnan(out)):
        if reasons[i] is None:
            reasons[i] = f"field {name!r} is not an ISO 8601 time: {_clip(column[i])}"
    return out


def _hex(column: ObjectArray, name: str, reasons: ObjectArray) -> FloatArray:
    """Numbers from hexadecimal text such as ``"1b"``; bad text is flagged."""
    codes, uniques = pd.factorize(column)
    table = np.array([*(_hex_or_nan(str(u)) for u in uniques), np.nan])
    out = table[codes]
    for i in np.flatnonzero((codes >= 0) & np.isnan(out)):
        if reasons[i] is None:
            reasons[i] = f"field {name!r} is not a hexadecimal number: {_clip(column[i])}"
    return out


def _hex_or_nan(text: str) -> float:
    try:
        value = int(text, 16)
    except ValueError:
        return float("nan")
    return float(value) if 0 <= value <= 0xFFFF else float("nan")


def _protocols(column: ObjectArray) -> FloatArray:
    codes, uniques = pd.factorize(column)
    table = np.array([*(protocol_number(u) for u in uniques), np.nan])
    return table[codes]


def _services(column: ObjectArray) -> ObjectArray:
    """``app_proto`` as the service, with Suricata's "none found" words dropped."""
    codes, uniques = pd.factorize(column)
    table = np.array(
        [*(None if str(u).lower() in _NO_SERVICE else u for u in uniques), None],
        dtype=object,
    )
    return table[codes]


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


register("suricata", SuricataEve)
