"""FlowContext.update (the flattened loop) against the readable per-row reference."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detector.tools.generate import DEFAULT_START, generate
from features.context import FlowContext
from features.records import FAILED_STATES, FlowBatch, from_columns, protocol_number

Columns = dict[str, npt.NDArray[np.float64]]


def _reference(context: FlowContext, batch: FlowBatch) -> tuple[Columns, npt.NDArray[np.bool_]]:
    """What update() computed before it was flattened: one _update_row per record."""
    n = len(batch)
    out = np.zeros((n, len(context.names)))
    warming = np.zeros(n, dtype=bool)
    ts, port = batch.num("ts"), batch.num("dst_port")
    src, dst = batch.text("src_ip"), batch.text("dst_ip")
    volume = np.nan_to_num(batch.num("src_bytes")) + np.nan_to_num(batch.num("dst_bytes"))
    failed = np.isin(batch.text("conn_state"), list(FAILED_STATES))
    for i in range(n):
        warming[i] = context._update_row(
            out[i],
            float(ts[i]),
            src[i],
            dst[i],
            float(port[i]),
            bool(failed[i]),
            float(volume[i]),
        )
    context._evict()
    return {name: out[:, j] for j, name in enumerate(context.names)}, warming


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
    fast, slow = FlowContext(**options), FlowContext(**options)  # type: ignore[arg-type]
    for start in range(0, len(batch), 700):
        part = batch.take(np.arange(start, min(start + 700, len(batch))))
        got, got_warming = fast.update(part)
        want, want_warming = _reference(slow, part)
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert np.array_equal(got[name].view(np.int64), want[name].view(np.int64)), name
        assert np.array_equal(got_warming, want_warming)
        assert (len(fast), fast.evicted, fast._clock) == (len(slow), slow.evicted, slow._clock)
