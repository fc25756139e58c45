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
the least recently seen keys are dropped beyond ``max_keys``; each host
remembers at most ``max_peers`` destinations and as many services. It is not
checkpointed: after a start, a rebalance or :meth:`FlowContext.forget`, the
state knows nothing of what happened before, so for the first longest window
of traffic time the statistics can be too low. :meth:`FlowContext.update`
marks the rows scored in that span as warming up. A host first seen later is
not warming up: its state is complete, it is simply new.

The update is a recursion over the records in order (each row sees every
earlier one), which numpy cannot express without changing the arithmetic, so
the per-record loop is compiled with numba. Keys are 64-bit hashes of the
addresses, and the state is struct-of-arrays: a slot per host, per (host,
destination) pair and per (host, destination, port) service, each table an
LRU list threaded through its slots. A pure-Python per-row form of the same
arithmetic lives in the tests as the reference the compiled loop must match
bit for bit.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from features.compiled import compiled
from features.records import FAILED_STATES, FlowBatch, from_columns

#: One minute catches bursts (scans, floods, password guessing); one hour catches
#: the low-and-slow probing that looks like one harmless flow now and then (on
#: the Stratosphere Zeek data it is what makes the context features pay; see
#: docs/benchmarks.md).
DEFAULT_WINDOWS = (60.0, 3600.0)
#: Port code of a flow without a port (ICMP, for one): all such flows to a
#: destination count as one service.
NO_PORT = -1

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


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


# Layout of the state arrays. Every table has a free-slot stack and an LRU
# list (least recently used at the head) threaded through ``links``.
#
# meta (int64): host LRU head, tail, count, host free top, pair free top,
#   service free top.
# host_links (int64, per host slot): LRU prev, next, then the host's pair list
#   head, tail, count, then its service list head, tail, count.
# pair_links / service_links (int64): LRU prev, next within the owning host.
_HEAD, _TAIL, _COUNT, _HOST_FREE, _PAIR_FREE, _SERVICE_FREE = range(6)
_PAIRS, _SERVICES = 2, 5  # offsets of the per-host lists in host_links


@compiled
def _unlink(links: I64, ends: I64, at: int, slot: int) -> None:
    """Take ``slot`` out of the list whose head and tail are ``ends[at:at + 2]``."""
    before, after = links[slot, 0], links[slot, 1]
    if before >= 0:
        links[before, 1] = after
    else:
        ends[at] = after
    if after >= 0:
        links[after, 0] = before
    else:
        ends[at + 1] = before
    links[slot, 0] = -1
    links[slot, 1] = -1


@compiled
def _append(links: I64, ends: I64, at: int, slot: int) -> None:
    """Put ``slot`` at the tail (most recently used end) of a list."""
    tail = ends[at + 1]
    links[slot, 0] = tail
    links[slot, 1] = -1
    if tail >= 0:
        links[tail, 1] = slot
    else:
        ends[at] = slot
    ends[at + 1] = slot


@compiled
def _drop_oldest(
    table: Any, keys: I64, links: I64, free: I64, meta: I64, top: int, ends: I64, at: int
) -> None:
    """Forget the least recently used entry of the list ``ends[at:at + 3]``
    (head, tail, count), freeing its slot onto the stack counted by ``meta[top]``.

    The same for every table: a host's destinations (``ends`` its row of
    ``host_links``, ``at`` = ``_PAIRS``) or services, or the hosts themselves
    (``ends`` = ``meta``, ``at`` = ``_HEAD``).
    """
    slot = ends[at]
    del table[keys[slot]]
    _unlink(links, ends, at, slot)
    ends[at + 2] -= 1
    free[meta[top]] = slot
    meta[top] += 1


@compiled
def _fold(
    ts: F64,
    src: I64,
    pair_keys: I64,
    service_keys: I64,
    failed: npt.NDArray[np.bool_],
    volume: F64,
    windows: F64,
    max_peers: int,
    max_keys: int,
    idle_timeout: float,
    settled_from: float,
    clock: F64,
    hosts: Any,
    pairs: Any,
    services: Any,
    meta: I64,
    host_free: I64,
    host_key: I64,
    host_seen: F64,
    host_stats: F64,
    host_links: I64,
    pair_free: I64,
    pair_key: I64,
    pair_stats: F64,
    pair_links: I64,
    service_free: I64,
    service_key: I64,
    service_seen: F64,
    service_links: I64,
    out: F64,
    warm: npt.NDArray[np.bool_],
) -> int:
    """Fold the records into the state, writing each row's context to ``out``.

    Then evict idle and surplus hosts (in the same call: entering compiled
    code costs more than a batch's eviction) and return how many went.

    The callers guarantee free slots for one new host, pair and service per
    record. ``host_stats`` holds, per window, the damped connections, new
    hosts, new ports, failures and bytes; ``pair_stats`` the last contact,
    damped count, damped mean gap and damped gap variance.
    """
    k = windows.shape[0]
    longest = windows[k - 1]
    for i in range(ts.shape[0]):
        t = ts[i]
        # One hash look-up finds the slot or claims the next free one.
        spare = host_free[meta[_HOST_FREE] - 1]
        host = hosts.setdefault(src[i], spare)
        if host == spare:
            meta[_HOST_FREE] -= 1
            host_key[host] = src[i]
            host_seen[host] = t
            host_stats[host, :] = 0.0
            for at in (_PAIRS, _SERVICES):  # empty lists: head, tail, count
                host_links[host, at] = -1
                host_links[host, at + 1] = -1
                host_links[host, at + 2] = 0
            meta[_COUNT] += 1
        else:
            _unlink(host_links, meta, _HEAD, host)
        _append(host_links, meta, _HEAD, host)
        last = host_seen[host]
        dt = t - last
        if dt < 0.0:
            dt = 0.0
        if t > last:
            host_seen[host] = t
        if t > clock[0]:
            clock[0] = t

        # The pair (source, destination): damped count and gap statistics.
        spare = pair_free[meta[_PAIR_FREE] - 1]
        pair = pairs.setdefault(pair_keys[i], spare)
        if pair == spare:
            meta[_PAIR_FREE] -= 1
            pair_key[pair] = pair_keys[i]
            pair_stats[pair, 0] = t
            pair_stats[pair, 1] = 1.0
            pair_stats[pair, 2] = 0.0
            pair_stats[pair, 3] = 0.0
            _append(pair_links, host_links[host], _PAIRS, pair)
            host_links[host, _PAIRS + 2] += 1
            while host_links[host, _PAIRS + 2] > max_peers:
                _drop_oldest(
                    pairs,
                    pair_key,
                    pair_links,
                    pair_free,
                    meta,
                    _PAIR_FREE,
                    host_links[host],
                    _PAIRS,
                )
            gap_peer = np.inf
        else:
            _unlink(pair_links, host_links[host], _PAIRS, pair)
            _append(pair_links, host_links[host], _PAIRS, pair)
            seen = pair_stats[pair, 0]
            gap_peer = t - seen
            if gap_peer < 0.0:
                gap_peer = 0.0
            if t > seen:
                pair_stats[pair, 0] = t
            pair_stats[pair, 1] = pair_stats[pair, 1] * np.exp(-gap_peer / longest) + 1.0
            delta = gap_peer - pair_stats[pair, 2]
            pair_stats[pair, 2] += delta / 8.0
            pair_stats[pair, 3] = 0.875 * (pair_stats[pair, 3] + delta * delta / 8.0)

        # The service (destination, port): time since it was last contacted.
        spare = service_free[meta[_SERVICE_FREE] - 1]
        service = services.setdefault(service_keys[i], spare)
        if service == spare:
            meta[_SERVICE_FREE] -= 1
            service_key[service] = service_keys[i]
            service_seen[service] = t
            _append(service_links, host_links[host], _SERVICES, service)
            host_links[host, _SERVICES + 2] += 1
            while host_links[host, _SERVICES + 2] > max_peers:
                _drop_oldest(
                    services,
                    service_key,
                    service_links,
                    service_free,
                    meta,
                    _SERVICE_FREE,
                    host_links[host],
                    _SERVICES,
                )
            gap_service = np.inf
        else:
            _unlink(service_links, host_links[host], _SERVICES, service)
            _append(service_links, host_links[host], _SERVICES, service)
            gap_service = t - service_seen[service]
            if gap_service < 0.0:
                gap_service = 0.0
            service_seen[service] = t

        for j in range(k):
            w = windows[j]
            decay = np.exp(-dt / w)
            c = host_stats[host, 5 * j] * decay + 1.0
            h = host_stats[host, 5 * j + 1] * decay + (1.0 if gap_peer > w else 0.0)
            o = host_stats[host, 5 * j + 2] * decay + (1.0 if gap_service > w else 0.0)
            x = host_stats[host, 5 * j + 3] * decay + (1.0 if failed[i] else 0.0)
            b = host_stats[host, 5 * j + 4] * decay + volume[i]
            host_stats[host, 5 * j] = c
            host_stats[host, 5 * j + 1] = h
            host_stats[host, 5 * j + 2] = o
            host_stats[host, 5 * j + 3] = x
            host_stats[host, 5 * j + 4] = b
            out[i, 5 * j] = c / w
            out[i, 5 * j + 1] = h
            out[i, 5 * j + 2] = o
            out[i, 5 * j + 3] = x / c
            out[i, 5 * j + 4] = b / w

        count, mean, spread = pair_stats[pair, 1], pair_stats[pair, 2], pair_stats[pair, 3]
        if count < 3.0 or mean <= 0.0:
            regularity = 0.0
        else:
            regularity = 1.0 / (1.0 + np.sqrt(0.0 if spread < 0.0 else spread) / mean)
        out[i, 5 * k] = count
        out[i, 5 * k + 1] = regularity
        warm[i] = t < settled_from

    return _evict(
        clock[0] - idle_timeout,
        max_keys,
        hosts,
        pairs,
        services,
        meta,
        host_free,
        host_key,
        host_seen,
        host_links,
        pair_free,
        pair_key,
        pair_links,
        service_free,
        service_key,
        service_links,
    )


@compiled
def _evict(
    horizon: float,
    max_keys: int,
    hosts: Any,
    pairs: Any,
    services: Any,
    meta: I64,
    host_free: I64,
    host_key: I64,
    host_seen: F64,
    host_links: I64,
    pair_free: I64,
    pair_key: I64,
    pair_links: I64,
    service_free: I64,
    service_key: I64,
    service_links: I64,
) -> int:
    """Drop least recently used hosts while too many or idle; return how many."""
    dropped = 0
    while meta[_COUNT] > 0:
        host = meta[_HEAD]
        if meta[_COUNT] <= max_keys and host_seen[host] >= horizon:
            break
        ends = host_links[host]
        while ends[_PAIRS + 2] > 0:
            _drop_oldest(pairs, pair_key, pair_links, pair_free, meta, _PAIR_FREE, ends, _PAIRS)
        while ends[_SERVICES + 2] > 0:
            _drop_oldest(
                services,
                service_key,
                service_links,
                service_free,
                meta,
                _SERVICE_FREE,
                ends,
                _SERVICES,
            )
        _drop_oldest(hosts, host_key, host_links, host_free, meta, _HOST_FREE, meta, _HEAD)
        dropped += 1
    return dropped


def _key_hash(values: npt.NDArray[np.object_]) -> I64:
    """64-bit hashes of address strings, the keys of the compiled tables.

    Python's own string hash: the state lives and dies with the process, so
    its per-process seed does no harm, and it is several times cheaper than
    hashing with pandas. A collision of two addresses is a 1 in 2**64 event.
    """
    return np.fromiter(map(hash, values), dtype=np.int64, count=values.shape[0])


def _combined(first: I64, second: I64) -> I64:
    """One 64-bit key for a pair of keys (a splitmix64 finaliser over both)."""
    with np.errstate(over="ignore"):
        z = first.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + second.view(np.uint64)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z.view(np.int64)


def _grown(array: npt.NDArray[Any], capacity: int, fill: float) -> npt.NDArray[Any]:
    shape = (capacity, *array.shape[1:])
    bigger = np.full(shape, fill, dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


class _Table:
    """Growable slot arrays of one kind (hosts, pairs or services) and their free stack."""

    def __init__(self, columns: dict[str, tuple[tuple[int, ...], type, float]]) -> None:
        self.capacity = 0
        self.free: I64 = np.zeros(0, dtype=np.int64)
        self.arrays: dict[str, npt.NDArray[Any]] = {
            name: np.full((0, *shape), fill, dtype=dtype)
            for name, (shape, dtype, fill) in columns.items()
        }

    def reserve(self, meta: I64, top: int, needed: int) -> None:
        """Make room for ``needed`` more slots; ``meta[top]`` counts the free ones."""
        if meta[top] >= needed:
            return
        old = self.capacity
        new = max(2 * old, old + needed, 1_024)
        free = np.zeros(new, dtype=np.int64)
        free[: meta[top]] = self.free[: meta[top]]
        fresh = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        free[meta[top] : meta[top] + fresh.size] = fresh
        meta[top] += fresh.size
        self.free = free
        for name, array in self.arrays.items():
            self.arrays[name] = _grown(array, new, -1 if array.dtype.kind == "i" else 0.0)
        self.capacity = new


class FlowContext:
    """Keyed, bounded, damped per-source-host statistics.

    Args:
        windows: Time constants in seconds, shortest first.
        max_keys: Most source hosts kept; the least recently seen go first.
        idle_timeout: Seconds after which an idle host is forgotten.
        max_peers: Most destinations (and services) remembered per host.
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
        self.evicted = 0
        self._windows = np.array(self.windows, dtype=np.float64)
        self.forget()

    def forget(self) -> None:
        """Drop all state (for example after partitions were revoked)."""
        i64 = numba.types.int64
        self._hosts = numba.typed.Dict.empty(key_type=i64, value_type=i64)
        self._pairs = numba.typed.Dict.empty(key_type=i64, value_type=i64)
        self._services = numba.typed.Dict.empty(key_type=i64, value_type=i64)
        self._meta: I64 = np.array([-1, -1, 0, 0, 0, 0], dtype=np.int64)
        width = 5 * len(self.windows)
        self._host_table = _Table(
            {
                "key": ((), np.int64, 0),
                "seen": ((), np.float64, 0.0),
                "stats": ((width,), np.float64, 0.0),
                "links": ((8,), np.int64, -1),
            }
        )
        self._pair_table = _Table(
            {
                "key": ((), np.int64, 0),
                "stats": ((4,), np.float64, 0.0),
                "links": ((2,), np.int64, -1),
            }
        )
        self._service_table = _Table(
            {
                "key": ((), np.int64, 0),
                "seen": ((), np.float64, 0.0),
                "links": ((2,), np.int64, -1),
            }
        )
        self._clock_cell: F64 = np.array([-np.inf])
        self._origin: float | None = None  # traffic time the state starts from

    @property
    def _clock(self) -> float:
        """The latest traffic time seen."""
        return float(self._clock_cell[0])

    def __len__(self) -> int:
        return int(self._meta[_COUNT])

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
        out = np.zeros((n, len(self.names)), dtype=np.float64)
        warm = np.zeros(n, dtype=bool)
        if n == 0:
            return {name: out[:, j] for j, name in enumerate(self.names)}, warm
        ts = np.ascontiguousarray(batch.num("ts"), dtype=np.float64)
        if self._origin is None:
            self._origin = float(ts[0])
        port = batch.num("dst_port")
        codes = np.where(np.isnan(port), NO_PORT, np.nan_to_num(port)).astype(np.int64)
        volume = np.nan_to_num(batch.num("src_bytes")) + np.nan_to_num(batch.num("dst_bytes"))
        failed = np.isin(batch.text("conn_state"), list(FAILED_STATES))
        meta = self._meta
        self._host_table.reserve(meta, _HOST_FREE, n)
        self._pair_table.reserve(meta, _PAIR_FREE, n)
        self._service_table.reserve(meta, _SERVICE_FREE, n)
        h, p, s = self._host_table.arrays, self._pair_table.arrays, self._service_table.arrays
        src = _key_hash(batch.text("src_ip"))
        pair = _combined(src, _key_hash(batch.text("dst_ip")))
        self.evicted += _fold(
            ts,
            src,
            pair,
            _combined(pair, codes),
            failed,
            np.ascontiguousarray(volume, dtype=np.float64),
            self._windows,
            self.max_peers,
            self.max_keys,
            self.idle_timeout,
            self._origin + self.windows[-1],
            self._clock_cell,
            self._hosts,
            self._pairs,
            self._services,
            meta,
            self._host_table.free,
            h["key"],
            h["seen"],
            h["stats"],
            h["links"],
            self._pair_table.free,
            p["key"],
            p["stats"],
            p["links"],
            self._service_table.free,
            s["key"],
            s["seen"],
            s["links"],
            out,
            warm,
        )
        return {name: out[:, j] for j, name in enumerate(self.names)}, warm


def warm_up() -> None:
    """Compile the update (or load it from numba's cache) on a two-row batch.

    The first call in a process takes a few seconds without a cache and well
    under one with it; later calls cost microseconds.
    """
    rows: dict[str, list[object]] = {
        "ts": [0.0, 1.0],
        "src_ip": ["192.0.2.1", "192.0.2.1"],
        "dst_ip": ["192.0.2.2", "192.0.2.3"],
        "dst_port": [443.0, None],
        "proto": [6.0, 6.0],
    }
    FlowContext(max_keys=1, max_peers=1).update(from_columns(rows, 2))
