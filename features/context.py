"""Per-source-host context: what a host has been doing lately.

A port scan, a SYN flood, a brute-force login or a beacon looks ordinary one
flow at a time and obvious in its context. :class:`FlowContext` keeps, for
each source address, exponentially damped statistics over a few time scales
and appends them to every flow:

* ``conn_rate_<w>``: connections per second over about ``w`` seconds;
* ``dst_hosts_<w>`` / ``dst_ports_<w>``: destination hosts / ports contacted
  for the first time within ``w`` seconds (a damped distinct count);
* ``failed_share_<w>``: share of those connections that failed
  (Zeek states S0, REJ, RST*, ...);
* ``bytes_rate_<w>``: bytes per second sent and received;
* ``pair_conns`` and ``pair_regularity``: for the (source, destination)
  pair, the damped connection count over the longest window and how regular
  the gaps between connections are (1 = clockwork, as in beaconing).

Damping means a window of ``w`` seconds is the time constant of an exponential
decay, so state is a few floats per key whatever the traffic. State is keyed
by source address, the same key the records are partitioned by on Kafka, so a
host's state lives in the process that consumes its partition.

State is bounded: keys idle for longer than ``idle_timeout`` are evicted, and
the least recently seen keys are dropped beyond ``max_keys``. It is not
checkpointed: after a start, a rebalance or :meth:`FlowContext.forget`, the
state knows nothing of what happened before, so for the first longest window
of traffic time the statistics can be too low. :meth:`FlowContext.update`
marks the rows scored in that span as warming up. A host first seen later is
not warming up: its state is complete, it is simply new.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from features.records import FAILED_STATES, FlowBatch

#: One minute catches bursts (scans, floods, password guessing); one hour catches
#: the low-and-slow probing that looks like one harmless flow now and then (on
#: the Stratosphere Zeek data it is what makes the context features pay; see
#: docs/benchmarks.md).
DEFAULT_WINDOWS = (60.0, 3600.0)
#: Memory per tracked source host, in bytes, used to turn a memory ceiling
#: into a key count (measured with tracemalloc on a mixed workload).
BYTES_PER_KEY = 2_500


def feature_names(windows: tuple[float, ...] = DEFAULT_WINDOWS) -> list[str]:
    """Names of the context columns, in the order they are produced."""
    names: list[str] = []
    for w in windows:
        tag = f"{int(w)}s"
        names += [
            f"conn_rate_{tag}",
            f"dst_hosts_{tag}",
            f"dst_ports_{tag}",
            f"failed_share_{tag}",
            f"bytes_rate_{tag}",
        ]
    return [*names, "pair_conns", "pair_regularity"]


@dataclass
class _Host:
    last_seen: float
    conns: list[float]
    hosts: list[float]
    ports: list[float]
    failed: list[float]
    volume: list[float]
    # destination -> [last seen, damped count, damped mean gap, damped gap variance]
    peers: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    # (destination, port) -> last seen
    services: OrderedDict[tuple[str, float], float] = field(default_factory=OrderedDict)


class FlowContext:
    """Keyed, bounded, damped per-source-host statistics.

    Args:
        windows: Time constants in seconds, shortest first.
        max_keys: Most source hosts kept; the least recently seen go first.
        idle_timeout: Seconds after which an idle host is forgotten.
        max_peers: Most destinations remembered per host.
    """

    def __init__(
        self,
        windows: tuple[float, ...] = DEFAULT_WINDOWS,
        max_keys: int = 100_000,
        idle_timeout: float = 3_600.0,
        max_peers: int = 256,
    ) -> None:
        self.windows = tuple(sorted(windows))
        self.max_keys = max_keys
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self.names = feature_names(self.windows)
        self._hosts: OrderedDict[str, _Host] = OrderedDict()
        self._clock = -math.inf
        self._origin: float | None = None  # traffic time the state starts from
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._hosts)

    def update(
        self, batch: FlowBatch
    ) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.bool_]]:
        """Fold a batch into the state and return each row's context.

        Rows are taken in batch order (Kafka order within a partition); each
        row sees the state including itself and every earlier row.

        Returns:
            The context columns by name, and a mask of rows that came less
            than the longest window after the state started (warming up).
        """
        n = len(batch)
        volume = np.nan_to_num(batch.num("src_bytes")) + np.nan_to_num(batch.num("dst_bytes"))
        failed = np.isin(batch.text("conn_state"), list(FAILED_STATES))
        # Python lists, not numpy scalars: the loop below is per record, and
        # element access on arrays costs more than the arithmetic itself.
        flat, warm = self._fold(
            batch.num("ts").tolist(),
            batch.text("src_ip").tolist(),
            batch.text("dst_ip").tolist(),
            batch.num("dst_port").tolist(),
            failed.tolist(),
            volume.tolist(),
        )
        out = np.array(flat, dtype=np.float64).reshape(n, len(self.names))
        self._evict()
        return {name: out[:, j] for j, name in enumerate(self.names)}, np.array(warm, dtype=bool)

    def _fold(
        self,
        ts: list[float],
        src: list[str],
        dst: list[str],
        port: list[float],
        failed: list[bool],
        volume: list[float],
    ) -> tuple[list[float], list[bool]]:
        """The per-record loop of :meth:`update`, flattened for speed.

        It does exactly the arithmetic of :meth:`_update_row` (the readable
        form, kept as the reference that tests compare against), in the same
        order, so the outputs are bit-identical; only calls, attribute look-ups
        and array element access are taken out of the loop.

        Returns:
            The context values row after row (rows x columns, flattened), and
            the warming-up flag of each row.
        """
        hosts, windows, max_peers = self._hosts, self.windows, self.max_peers
        longest, k, clock = windows[-1], len(windows), self._clock
        if self._origin is None and ts:
            self._origin = ts[0]
        settled_from = (self._origin if self._origin is not None else 0.0) + longest
        exp, sqrt, inf = math.exp, math.sqrt, math.inf
        flat: list[float] = []
        extend = flat.extend
        warm: list[bool] = []
        for t, s, d, p, f, v in zip(ts, src, dst, port, failed, volume, strict=True):
            host = hosts.get(s)
            if host is None:
                host = _Host(t, [0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k)
                hosts[s] = host
            else:
                hosts.move_to_end(s)
            last = host.last_seen
            dt = t - last
            if dt < 0.0:
                dt = 0.0
            host.last_seen = last if last > t else t
            if t > clock:
                clock = t

            # The pair (source, destination): damped count and gap statistics.
            peers = host.peers
            peer = peers.get(d)
            if peer is None:
                peer = peers[d] = [t, 1.0, 0.0, 0.0]
                while len(peers) > max_peers:
                    peers.popitem(last=False)
                gap_peer = inf
            else:
                peers.move_to_end(d)
                seen = peer[0]
                gap_peer = t - seen
                if gap_peer < 0.0:
                    gap_peer = 0.0
                peer[0] = seen if seen > t else t
                peer[1] = peer[1] * exp(-gap_peer / longest) + 1.0
                delta = gap_peer - peer[2]
                peer[2] += delta / 8.0
                peer[3] = 0.875 * (peer[3] + delta * delta / 8.0)

            # The service (destination, port): time since it was last contacted.
            services, key = host.services, (d, p)
            before = services.get(key)
            services[key] = t
            if before is None:
                while len(services) > max_peers:
                    services.popitem(last=False)
                gap_service = inf
            else:
                services.move_to_end(key)
                gap_service = t - before
                if gap_service < 0.0:
                    gap_service = 0.0

            conns, new_hosts, new_ports = host.conns, host.hosts, host.ports
            fails, volumes = host.failed, host.volume
            for j, w in enumerate(windows):
                decay = exp(-dt / w)
                c = conns[j] = conns[j] * decay + 1.0
                h = new_hosts[j] = new_hosts[j] * decay + (gap_peer > w)
                o = new_ports[j] = new_ports[j] * decay + (gap_service > w)
                x = fails[j] = fails[j] * decay + f
                b = volumes[j] = volumes[j] * decay + v
                extend((c / w, h, o, x / c, b / w))

            count, mean, spread = peer[1], peer[2], peer[3]
            if count < 3.0 or mean <= 0.0:
                regularity = 0.0
            else:
                regularity = 1.0 / (1.0 + sqrt(0.0 if spread < 0.0 else spread) / mean)
            extend((count, regularity))
            warm.append(t < settled_from)
        self._clock = clock
        return flat, warm

    def _update_row(
        self,
        row: npt.NDArray[np.float64],
        t: float,
        src: str,
        dst: str,
        port: float,
        failed: bool,
        volume: float,
    ) -> bool:
        if self._origin is None:
            self._origin = t
        host = self._hosts.get(src)
        if host is None:
            k = len(self.windows)
            host = _Host(t, [0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k)
            self._hosts[src] = host
        else:
            self._hosts.move_to_end(src)
        dt = max(t - host.last_seen, 0.0)
        host.last_seen = max(t, host.last_seen)
        self._clock = max(self._clock, t)

        gap_peer = self._touch_peer(host, dst, t)
        gap_service = self._touch_service(host, dst, port, t)
        j = 0
        for k, w in enumerate(self.windows):
            decay = math.exp(-dt / w)
            host.conns[k] = host.conns[k] * decay + 1.0
            host.hosts[k] = host.hosts[k] * decay + (gap_peer > w)
            host.ports[k] = host.ports[k] * decay + (gap_service > w)
            host.failed[k] = host.failed[k] * decay + failed
            host.volume[k] = host.volume[k] * decay + volume
            row[j] = host.conns[k] / w
            row[j + 1] = host.hosts[k]
            row[j + 2] = host.ports[k]
            row[j + 3] = host.failed[k] / host.conns[k]
            row[j + 4] = host.volume[k] / w
            j += 5
        peer = host.peers[dst]
        row[j] = peer[1]
        row[j + 1] = _regularity(peer)
        return t < self._origin + self.windows[-1]

    def _touch_peer(self, host: _Host, dst: str, t: float) -> float:
        """Update the pair statistics; return the gap since the last contact."""
        longest = self.windows[-1]
        peer = host.peers.get(dst)
        if peer is None:
            host.peers[dst] = [t, 1.0, 0.0, 0.0]
            self._trim(host.peers)
            return math.inf
        host.peers.move_to_end(dst)
        gap = max(t - peer[0], 0.0)
        peer[0] = max(t, peer[0])
        peer[1] = peer[1] * math.exp(-gap / longest) + 1.0
        # Welford-style damped mean and variance of the gaps (weight 1/8).
        delta = gap - peer[2]
        peer[2] += delta / 8.0
        peer[3] = 0.875 * (peer[3] + delta * delta / 8.0)
        return gap

    def _touch_service(self, host: _Host, dst: str, port: float, t: float) -> float:
        key = (dst, port)
        last = host.services.get(key)
        host.services[key] = t
        host.services.move_to_end(key)
        self._trim(host.services)
        return math.inf if last is None else max(t - last, 0.0)

    def _trim(self, table: OrderedDict[Any, Any]) -> None:
        while len(table) > self.max_peers:
            table.popitem(last=False)

    def _evict(self) -> None:
        horizon = self._clock - self.idle_timeout
        hosts = self._hosts
        while hosts and (
            len(hosts) > self.max_keys or next(iter(hosts.values())).last_seen < horizon
        ):
            hosts.popitem(last=False)
            self.evicted += 1

    def forget(self) -> None:
        """Drop all state (for example after partitions were revoked)."""
        self._hosts.clear()
        self._origin = None


def _regularity(peer: list[float]) -> float:
    """1 for perfectly periodic contacts, towards 0 for irregular ones."""
    if peer[1] < 3.0 or peer[2] <= 0.0:
        return 0.0
    cv = math.sqrt(max(peer[3], 0.0)) / peer[2]
    return 1.0 / (1.0 + cv)
