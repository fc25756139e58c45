"""FlowContext.update (the compiled loop) against a readable per-row reference."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import numpy.typing as npt
import pytest

from detector.tools.generate import DEFAULT_START, generate
from features.context import DEFAULT_WINDOWS, NO_PORT, FlowContext, feature_names
from features.records import FAILED_STATES, FlowBatch, from_columns, protocol_number

Columns = dict[str, npt.NDArray[np.float64]]


class _Host:
    def __init__(self, t: float, k: int) -> None:
        self.last_seen = t
        # Per window: damped connections, new hosts, new ports, failures, bytes.
        self.stats = [[0.0] * 5 for _ in range(k)]
        # destination -> [last seen, damped count, damped mean gap, damped gap variance]
        self.peers: OrderedDict[str, list[float]] = OrderedDict()
        # (destination, port) -> last seen
        self.services: OrderedDict[tuple[str, int], float] = OrderedDict()


class ReferenceContext:
    """The arithmetic of FlowContext, one row at a time, with Python containers."""

    def __init__(
        self,
        windows: tuple[float, ...] = DEFAULT_WINDOWS,
        max_keys: int = 100_000,
        idle_timeout: float = 3_600.0,
        max_peers: int = 256,
    ) -> None:
        self.windows = tuple(sorted(windows))
        self.max_keys, self.idle_timeout, self.max_peers = max_keys, idle_timeout, max_peers
        self.names = feature_names(self.windows)
        self.hosts: OrderedDict[str, _Host] = OrderedDict()
        self.clock = -math.inf
        self.origin: float | None = None
        self.evicted = 0

    def update(self, batch: FlowBatch) -> tuple[Columns, npt.NDArray[np.bool_]]:
        n = len(batch)
        out = np.zeros((n, len(self.names)))
        warming = np.zeros(n, dtype=bool)
        ts, port = batch.num("ts"), batch.num("dst_port")
        src, dst = batch.text("src_ip"), batch.text("dst_ip")
        volume = np.nan_to_num(batch.num("src_bytes")) + np.nan_to_num(batch.num("dst_bytes"))
        failed = np.isin(batch.text("conn_state"), list(FAILED_STATES))
        for i in range(n):
            code = NO_PORT if math.isnan(port[i]) else int(port[i])
            warming[i] = self._row(
                out[i], float(ts[i]), src[i], dst[i], code, bool(failed[i]), float(volume[i])
            )
        self._evict()
        return {name: out[:, j] for j, name in enumerate(self.names)}, warming

    def _row(
        self,
        row: npt.NDArray[np.float64],
        t: float,
        src: str,
        dst: str,
        port: int,
        failed: bool,
        volume: float,
    ) -> bool:
        if self.origin is None:
            self.origin = t
        host = self.hosts.get(src)
        if host is None:
            host = self.hosts[src] = _Host(t, len(self.windows))
        self.hosts.move_to_end(src)
        dt = max(t - host.last_seen, 0.0)
        host.last_seen = max(t, host.last_seen)
        self.clock = max(self.clock, t)

        longest = self.windows[-1]
        peer = host.peers.get(dst)
        if peer is None:
            peer = host.peers[dst] = [t, 1.0, 0.0, 0.0]
            self._trim(host.peers)
            gap_peer = math.inf
        else:
            host.peers.move_to_end(dst)
            gap_peer = max(t - peer[0], 0.0)
            peer[0] = max(t, peer[0])
            peer[1] = peer[1] * math.exp(-gap_peer / longest) + 1.0
            delta = gap_peer - peer[2]
            peer[2] += delta / 8.0
            peer[3] = 0.875 * (peer[3] + delta * delta / 8.0)

        last_service = host.services.get((dst, port))
        host.services[(dst, port)] = t
        host.services.move_to_end((dst, port))
        self._trim(host.services)
        gap_service = math.inf if last_service is None else max(t - last_service, 0.0)

        for k, w in enumerate(self.windows):
            decay = math.exp(-dt / w)
            s = host.stats[k]
            s[0] = s[0] * decay + 1.0
            s[1] = s[1] * decay + (gap_peer > w)
            s[2] = s[2] * decay + (gap_service > w)
            s[3] = s[3] * decay + failed
            s[4] = s[4] * decay + volume
            row[5 * k : 5 * k + 5] = (s[0] / w, s[1], s[2], s[3] / s[0], s[4] / w)
        count, mean, spread = peer[1], peer[2], peer[3]
        regularity = 0.0
        if count >= 3.0 and mean > 0.0:
            regularity = 1.0 / (1.0 + math.sqrt(max(spread, 0.0)) / mean)
        row[-2:] = (count, regularity)
        return t < self.origin + longest

    def _trim(
        self, table: OrderedDict[str, list[float]] | OrderedDict[tuple[str, int], float]
    ) -> None:
        while len(table) > self.max_peers:
            table.popitem(last=False)

    def _evict(self) -> None:
        horizon = self.clock - self.idle_timeout
        while self.hosts and (
            len(self.hosts) > self.max_keys or next(iter(self.hosts.values())).last_seen < horizon
        ):
            self.hosts.popitem(last=False)
            self.evicted += 1


def _flows(seed: int) -> FlowBatch:
    """Generated flows, with some ports missing and some times out of order."""
    rows = generate(3_000, seed=seed, attacks=True, start=DEFAULT_START, hours=2, episodes=5)
    for row in rows[::37]:
        row["dst_port"] = None
    for row in rows[::53]:
        row["ts"] -= 5.0
    fields = ("ts", "src_ip", "dst_ip", "dst_port", "src_bytes", "dst_bytes", "conn_state")
    values: dict[str, list[object]] = {f: [r[f] for r in rows] for f in fields}
    values["proto"] = [protocol_number(r["proto"]) for r in rows]
    return from_columns(values, len(rows))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_keys": 20, "max_peers": 3, "idle_timeout": 60.0},
        {"windows": (1.0, 5.0, 60.0)},
    ],
    ids=["defaults", "tight-bounds", "three-windows"],
)
def test_update_is_bit_identical_to_the_per_row_reference(options: dict[str, object]) -> None:
    """Every column, the warming mask and the state after each batch match exactly."""
    batch = _flows(seed=5)
    fast = FlowContext(**options)  # type: ignore[arg-type]
    slow = ReferenceContext(**options)  # type: ignore[arg-type]
    for start in range(0, len(batch), 700):
        part = batch.take(np.arange(start, min(start + 700, len(batch))))
        got, got_warming = fast.update(part)
        want, want_warming = slow.update(part)
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert np.array_equal(got[name].view(np.int64), want[name].view(np.int64)), name
        assert np.array_equal(got_warming, want_warming)
        assert (len(fast), fast.evicted, fast._clock) == (len(slow.hosts), slow.evicted, slow.clock)


def test_forget_starts_afresh_and_state_grows_past_its_first_capacity() -> None:
    """After forget() the same traffic gives the same context as a new instance."""
    batch = _flows(seed=9)
    used = FlowContext(max_peers=2)
    for start in range(0, len(batch), 500):
        used.update(batch.take(np.arange(start, min(start + 500, len(batch)))))
    used.forget()
    assert len(used) == 0
    fresh = FlowContext(max_peers=2)
    got, _ = used.update(batch)
    want, _ = fresh.update(batch)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert len(used) == len(fresh) > 0


def test_an_empty_batch_changes_nothing() -> None:
    context = FlowContext()
    got, warming = context.update(_flows(seed=3).take(np.arange(0)))
    assert all(col.shape == (0,) for col in got.values()) and warming.shape == (0,)
    assert len(context) == 0
