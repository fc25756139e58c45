"""Damped per-host, per-pair and per-socket statistics of packets.

One packet says little; the traffic around it says a lot. For every packet,
:class:`PacketContext` updates and reads out exponentially damped statistics
of packet sizes and timing, kept for three keys and several time scales:

* **host** (the source address): ``host_rate_<w>`` packets/s sent,
  ``host_size_mean_<w>`` and ``host_size_std_<w>`` (bytes);
* **pair** (source and destination address, both directions kept together):
  the same three for the packet's own direction (``pair_rate``,
  ``pair_size_mean``, ``pair_size_std``), then statistics of the two
  directions jointly: ``pair_magnitude`` (root of the sum of the squared mean
  sizes), ``pair_radius`` (root of the sum of the variances), ``pair_corr``
  (correlation of the two directions' size deviations, from a damped
  co-moment of each packet's deviation with the other direction's latest
  one), and ``pair_balance`` (-1: only the other way, 1: only this way);
* **socket** (source address and port to destination address and port, and
  protocol): ``sock_rate``, ``sock_size_mean``, ``sock_size_std``, and the
  inter-arrival time's damped mean and standard deviation (jitter),
  ``sock_gap_mean`` and ``sock_gap_std`` (seconds).

A time scale ``w`` is the time constant of the decay: a statistic's weight
is multiplied by ``exp(-dt / w)`` after ``dt`` seconds, so a steady rate of
``r`` packets/s settles at a weight of ``r * w``. The defaults, 0.1 s, 1 s,
10 s and 60 s, separate bursts from sessions from a host's habits. State is a
few floats per key and scale whatever the traffic.

Columns come in blocks: every host column for each scale, then every pair
column, then every socket column (see :func:`feature_names`).

State is keyed by addresses, and the stream is partitioned by source address,
so a host's statistics live in the process that owns its partition. The
reverse direction of a pair (and of a socket) is published under the other
address: the two-direction pair statistics are complete only where one
consumer reads both hosts' partitions (one partition, or one consumer per
topic); elsewhere the other direction looks silent. State is bounded: keys
idle for longer than ``idle_timeout`` are dropped, and beyond ``max_keys``
per key kind the least recently seen go first. It is not checkpointed: a
source host is reported as warming up until it has been seen for the longest
time scale.

This is the idea of Kitsune's AfterImage (Mirsky et al., NDSS 2018): damped
incremental statistics per stream, over several decay rates. The keys,
scales, columns and arithmetic here are this project's own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from features.records import FLOW_FIELDS, FlowBatch
from features.spec import (
    DERIVED_FIELDS,
    TCP_FLAG_NAMES,
    Field,
    FittedSpec,
    RawColumns,
    SchemaMismatchError,
    Vectors,
    derived_columns,
)

#: Time scales in seconds (time constants of the decay), shortest first.
DEFAULT_WINDOWS = (0.1, 1.0, 10.0, 60.0)
RECORD = "packet"
HOST_STATS = ("host_rate", "host_size_mean", "host_size_std")
PAIR_STATS = (
    "pair_rate",
    "pair_size_mean",
    "pair_size_std",
    "pair_magnitude",
    "pair_radius",
    "pair_corr",
    "pair_balance",
)
SOCKET_STATS = ("sock_rate", "sock_size_mean", "sock_size_std", "sock_gap_mean", "sock_gap_std")
#: Statistics that may be negative: not log-scaled.
SIGNED_STATS = frozenset({"pair_corr", "pair_balance"})
#: Memory per key in bytes, host, pair and socket entries alike, to size
#: ``max_keys`` (tracemalloc on three Slips captures: 1,290 to 1,540).
BYTES_PER_KEY = 1_500
#: A direction whose damped weight is below this counts as silent.
_SILENT = 1e-6


def scale_tag(w: float) -> str:
    """``0.1`` -> ``100ms``, ``10.0`` -> ``10s``."""
    return f"{round(w * 1000)}ms" if w < 1 else f"{w:g}s"


def feature_names(windows: Sequence[float] = DEFAULT_WINDOWS) -> list[str]:
    """Names of the statistics columns, in the order they are produced."""
    names: list[str] = []
    for group in (HOST_STATS, PAIR_STATS, SOCKET_STATS):
        names += [f"{stat}_{scale_tag(w)}" for w in windows for stat in group]
    return names


Entry = list[Any]


class PacketContext:
    """Keyed, bounded, damped packet statistics.

    Args:
        windows: Time constants in seconds, shortest first.
        max_keys: Most keys kept of each kind (hosts, pairs, sockets); the
            least recently seen go first.
        idle_timeout: Seconds after which an idle key is forgotten.
    """

    def __init__(
        self,
        windows: Sequence[float] = DEFAULT_WINDOWS,
        max_keys: int = 100_000,
        idle_timeout: float = 600.0,
    ) -> None:
        self.windows = tuple(sorted(float(w) for w in windows))
        self.max_keys = max_keys
        self.idle_timeout = idle_timeout
        self.names = feature_names(self.windows)
        self.hosts: OrderedDict[str, Entry] = OrderedDict()
        self.pairs: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.sockets: OrderedDict[tuple[str, int, str, int, int], Entry] = OrderedDict()
        self._inverse = [1.0 / w for w in self.windows]
        self._clock = -math.inf
        self.evicted = 0

    def __len__(self) -> int:
        """Keys held, of all kinds."""
        return len(self.hosts) + len(self.pairs) + len(self.sockets)

    def update(
        self, batch: FlowBatch
    ) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.bool_]]:
        """Fold a batch into the state and return each row's statistics.

        Rows are taken in batch order; each row sees the state including
        itself and every earlier row. A packet's size is its ``src_bytes``.

        Returns:
            The statistics columns by name, and a mask of rows whose source
            host has been seen for less than the longest time scale.
        """
        n = len(batch)
        # Python lists, not arrays: the loop is per packet, and element access
        # on arrays costs more than the arithmetic. NaN ports become -1 so that
        # they compare equal as dictionary keys.
        ports = [
            np.nan_to_num(batch.num(name), nan=-1.0).astype(np.int64).tolist()
            for name in ("src_port", "dst_port")
        ]
        blocks, warm = self._fold(
            batch.num("ts").tolist(),
            batch.text("src_ip").tolist(),
            batch.text("dst_ip").tolist(),
            ports[0],
            ports[1],
            np.nan_to_num(batch.num("proto"), nan=-1.0).astype(np.int64).tolist(),
            np.nan_to_num(batch.num("src_bytes")).tolist(),
        )
        k = len(self.windows)
        widths = (len(HOST_STATS) * k, len(PAIR_STATS) * k, len(SOCKET_STATS) * k)
        out = np.hstack(
            [np.array(b, np.float64).reshape(n, w) for b, w in zip(blocks, widths, strict=True)]
        )
        self._evict()
        return {name: out[:, j] for j, name in enumerate(self.names)}, np.array(warm, dtype=bool)

    def _fold(
        self,
        ts: list[float],
        src: list[str],
        dst: list[str],
        sport: list[int],
        dport: list[int],
        proto: list[int],
        size: list[float],
    ) -> tuple[tuple[list[float], list[float], list[float]], list[bool]]:
        """The per-packet loop: update each key's state, collect the row.

        Returns:
            The host, pair and socket statistics, each row after row (rows x
            columns of that block, flattened), and each row's warming-up flag.
        """
        k, longest, inverse = len(self.windows), self.windows[-1], self._inverse
        hosts, pairs, sockets = self.hosts, self.pairs, self.sockets
        host_out: list[float] = []
        pair_out: list[float] = []
        sock_out: list[float] = []
        warm: list[bool] = []
        clock = self._clock
        for t, s, d, sp, dp, p, x in zip(ts, src, dst, sport, dport, proto, size, strict=True):
            if t > clock:
                clock = t
            warm.append(_host(hosts, s, t, x, k, inverse, host_out) < longest)
            _pair(pairs, s, d, t, x, k, inverse, pair_out)
            _socket(sockets, (s, sp, d, dp, p), t, x, k, inverse, sock_out)
        self._clock = clock
        return (host_out, pair_out, sock_out), warm

    def _evict(self) -> None:
        horizon = self._clock - self.idle_timeout
        for table in (self.hosts, self.pairs, self.sockets):
            while table and (len(table) > self.max_keys or next(iter(table.values()))[0] < horizon):
                table.popitem(last=False)
                self.evicted += 1

    def forget(self) -> None:
        """Drop all state (for example after partitions were revoked)."""
        for table in (self.hosts, self.pairs, self.sockets):
            table.clear()


def _host(
    hosts: OrderedDict[str, Entry],
    key: str,
    t: float,
    x: float,
    k: int,
    inverse: list[float],
    out: list[float],
) -> float:
    """Update a source host: weight, size sum, size square sum per scale.

    Entry: ``[last seen, first seen, [[w, sum, squares] per scale]]``.

    Returns:
        How long the host has been known, in seconds.
    """
    entry = hosts.get(key)
    if entry is None:
        entry = hosts[key] = [t, t, [[0.0, 0.0, 0.0] for _ in range(k)]]
    else:
        hosts.move_to_end(key)
    last = entry[0]
    entry[0] = t if t > last else last
    xx, dt, exp, sqrt = x * x, t - last, math.exp, math.sqrt
    for st, r in zip(entry[2], inverse, strict=True):
        f = exp(-dt * r) if dt > 0.0 else 1.0
        w = st[0] = st[0] * f + 1.0
        total = st[1] = st[1] * f + x
        squares = st[2] = st[2] * f + xx
        m = total / w
        v = squares / w - m * m
        out += (w * r, m, sqrt(v) if v > 0.0 else 0.0)
    first: float = entry[1]
    return t - first


def _pair(
    pairs: OrderedDict[tuple[str, str], Entry],
    src: str,
    dst: str,
    t: float,
    x: float,
    k: int,
    inverse: list[float],
    out: list[float],
) -> None:
    """Update a host pair; both directions live in one entry.

    Entry: ``[last seen, [per scale: w, sum, squares, last deviation] for the
    lower address's direction, the same for the other direction, [damped
    co-moment per scale]]``.
    """
    forward = src <= dst
    key = (src, dst) if forward else (dst, src)
    entry = pairs.get(key)
    if entry is None:
        fresh = [[[0.0, 0.0, 0.0, 0.0] for _ in range(k)] for _ in range(2)]
        entry = pairs[key] = [t, fresh[0], fresh[1], [0.0] * k]
    else:
        pairs.move_to_end(key)
    last = entry[0]
    entry[0] = t if t > last else last
    mine, theirs = (entry[1], entry[2]) if forward else (entry[2], entry[1])
    cross = entry[3]
    xx, dt, exp, sqrt = x * x, t - last, math.exp, math.sqrt
    for j, r in enumerate(inverse):
        f = exp(-dt * r) if dt > 0.0 else 1.0
        a, b = mine[j], theirs[j]
        wa = a[0] = a[0] * f + 1.0
        total = a[1] = a[1] * f + x
        squares = a[2] = a[2] * f + xx
        ma = total / wa
        va = squares / wa - ma * ma
        va = va if va > 0.0 else 0.0
        deviation = a[3] = x - ma
        wb = b[0] = b[0] * f
        b[1] *= f
        b[2] *= f
        c = cross[j] = cross[j] * f + deviation * b[3]
        if wb > _SILENT:
            mb = b[1] / wb
            vb = b[2] / wb - mb * mb
            vb = vb if vb > 0.0 else 0.0
            spread = sqrt(va * vb)
            corr = c / (wa + wb) / spread if spread > 0.0 else 0.0
            corr = 1.0 if corr > 1.0 else (-1.0 if corr < -1.0 else corr)
        else:
            mb = vb = corr = 0.0
        out += (
            wa * r,
            ma,
            sqrt(va),
            sqrt(ma * ma + mb * mb),
            sqrt(va + vb),
            corr,
            (wa - wb) / (wa + wb),
        )


def _socket(
    sockets: OrderedDict[tuple[str, int, str, int, int], Entry],
    key: tuple[str, int, str, int, int],
    t: float,
    x: float,
    k: int,
    inverse: list[float],
    out: list[float],
) -> None:
    """Update a socket: sizes, and the gaps between its packets (jitter).

    Entry: ``[last seen, [per scale: w, sum, squares, gap w, gap sum, gap squares]]``.
    """
    entry = sockets.get(key)
    if entry is None:
        entry = sockets[key] = [t, [[0.0] * 6 for _ in range(k)]]
        gap = -1.0  # no gap before the first packet
    else:
        sockets.move_to_end(key)
        gap = t - entry[0]
        gap = gap if gap > 0.0 else 0.0
    last = entry[0]
    entry[0] = t if t > last else last
    xx, gg, dt, exp, sqrt = x * x, gap * gap, t - last, math.exp, math.sqrt
    for st, r in zip(entry[1], inverse, strict=True):
        f = exp(-dt * r) if dt > 0.0 else 1.0
        w = st[0] = st[0] * f + 1.0
        total = st[1] = st[1] * f + x
        squares = st[2] = st[2] * f + xx
        m = total / w
        v = squares / w - m * m
        if gap >= 0.0:
            gw = st[3] = st[3] * f + 1.0
            gap_total = st[4] = st[4] * f + gap
            gap_squares = st[5] = st[5] * f + gg
            gm = gap_total / gw
            gv = gap_squares / gw - gm * gm
        else:
            gm = gv = 0.0
        out += (w * r, m, sqrt(v) if v > 0.0 else 0.0, gm, sqrt(gv) if gv > 0.0 else 0.0)


# --- the vectorizer -----------------------------------------------------------------------

_STAT_LABELS = {
    "host_rate": "packets/s from this host",
    "host_size_mean": "mean packet size from this host (bytes)",
    "host_size_std": "spread of packet sizes from this host (bytes)",
    "pair_rate": "packets/s to this destination",
    "pair_size_mean": "mean packet size to this destination (bytes)",
    "pair_size_std": "spread of packet sizes to this destination (bytes)",
    "pair_magnitude": "mean packet size both ways with this destination (bytes)",
    "pair_radius": "spread of packet sizes both ways with this destination (bytes)",
    "pair_corr": "correlation of packet sizes both ways with this destination",
    "pair_balance": "share of packets this way with this destination (-1 to 1)",
    "sock_rate": "packets/s on this socket",
    "sock_size_mean": "mean packet size on this socket (bytes)",
    "sock_size_std": "spread of packet sizes on this socket (bytes)",
    "sock_gap_mean": "mean gap between packets on this socket (s)",
    "sock_gap_std": "jitter of gaps between packets on this socket (s)",
}


def default_packet_spec(windows: Sequence[float] = DEFAULT_WINDOWS) -> list[Field]:
    """The packet feature spec used unless a model is trained with another."""
    numeric = {"log": True, "clip": 8.0}
    signed = {"log": False, "clip": 8.0}
    fields = [
        Field("length", "numeric", numeric, "packet size (bytes)"),
        Field("proto", "onehot", {"max_values": 8}, "protocol"),
        Field("dst_port", "onehot", {"max_values": 24, "buckets": 8}, "destination port"),
        Field("src_port_range", "onehot", {"max_values": 4}, "source port range"),
        Field("tcp_flags", "bits", {"names": TCP_FLAG_NAMES}, "TCP flags"),
    ]
    for name in feature_names(windows):
        stat, _, tag = name.rpartition("_")
        params = signed if stat in SIGNED_STATS else numeric
        fields.append(Field(name, "numeric", params, f"{_STAT_LABELS[stat]} over {tag}"))
    return fields


def packet_columns(batch: FlowBatch) -> RawColumns:
    """Canonical columns plus ``length`` and ``src_port_range``."""
    raw = derived_columns(batch)
    raw["length"] = batch.num("src_bytes")
    return raw


class PacketVectorizer:
    """Packet rows to model matrix: raw columns, damped statistics, fitted spec.

    The statistics are the only mutable part (``context``); keep one
    vectorizer per consumer so that state follows partition ownership.
    """

    def __init__(self, spec: FittedSpec, context: PacketContext | None = None) -> None:
        self.spec = spec
        self.context = context if context is not None else PacketContext(spec.windows)

    @classmethod
    def reuse(
        cls,
        spec: FittedSpec,
        state: Any = None,
        max_keys: int = 100_000,
        idle_timeout: float = 600.0,
    ) -> PacketVectorizer:
        """A vectorizer for ``spec`` that keeps ``state`` if it is compatible.

        Args:
            spec: A fitted packet spec.
            state: The previous vectorizer's context (kept across a model
                swap when its time scales match), or anything else.
            max_keys: Key bound of a new context.
            idle_timeout: Idle timeout of a new context, seconds.
        """
        if isinstance(state, PacketContext) and state.windows == tuple(spec.windows):
            return cls(spec, state)
        return cls(spec, PacketContext(spec.windows, max_keys, idle_timeout))

    def __call__(self, batch: FlowBatch) -> Vectors:
        """Vectors for a batch of packet rows in arrival order."""
        raw = packet_columns(batch)
        stats, warming = self.context.update(batch)
        raw.update(stats)
        return Vectors(self.spec.transform(raw), raw, warming)


def fit_packet_vectorizer(
    batch: FlowBatch,
    fields: Sequence[Field] | None = None,
    windows: Sequence[float] = DEFAULT_WINDOWS,
    fit_rows: npt.NDArray[np.bool_] | None = None,
) -> tuple[PacketVectorizer, Vectors]:
    """Fit a packet vectorizer on packets given in time order.

    Statistics are computed over every row (each packet sees the traffic
    around it), transforms are fitted on ``fit_rows`` only.

    Returns:
        The vectorizer (with fresh state) and the training vectors.
    """
    context = PacketContext(windows)
    raw = packet_columns(batch)
    stats, warming = context.update(batch)
    raw.update(stats)
    rows = np.ones(len(batch), bool) if fit_rows is None else fit_rows
    spec = FittedSpec.fit(
        fields or default_packet_spec(context.windows),
        {k: v[rows] for k, v in raw.items()},
        context.windows,
        RECORD,
    )
    return PacketVectorizer(spec), Vectors(spec.transform(raw), raw, warming)


def check_packet_inputs(spec: FittedSpec) -> None:
    """Refuse a packet spec that needs fields the packet path does not produce.

    Raises:
        SchemaMismatchError: Naming each missing field.
    """
    available = set(FLOW_FIELDS) | set(DERIVED_FIELDS) | {"length"}
    available |= set(feature_names(spec.windows))
    missing = [f.name for f in spec.fields if f.name not in available]
    if missing:
        raise SchemaMismatchError(
            "the packet model needs fields the packet path does not provide: " + ", ".join(missing)
        )


def record_kind(fmt: str | None) -> str:
    """What a row of format ``fmt`` is: ``packet`` or ``flow`` (the default)."""
    if not fmt:
        return "flow"
    from features.formats import get_adapter

    try:
        adapter = get_adapter(fmt)
    except ValueError:
        return "flow"
    return str(getattr(adapter, "record", "flow"))
