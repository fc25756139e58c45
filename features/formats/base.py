"""What every format adapter provides, and the checks they all share."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.records import REQUIRED_FIELDS, STRING_FIELDS, FlowBatch, Reject

#: A timestamp further than this ahead of the wall clock is refused.
MAX_CLOCK_SKEW_S = 86_400.0
#: A text field longer than this is refused: no address, service or state is
#: this long, and it would make the alert too large to publish.
MAX_TEXT_CHARS = 256


@dataclass
class Decoded:
    """The outcome of decoding one micro-batch.

    Attributes:
        batch: The rows that decoded and validated.
        rejects: Rows that did not, each with its reason (dead letters).
        skipped: Input positions that are valid but are not flows (for
            example Suricata ``alert`` events): neither scored nor
            dead-lettered.
    """

    batch: FlowBatch
    rejects: list[Reject] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


class FormatAdapter(Protocol):
    """Turns one tool's records into canonical flows.

    Adapters are the only code that knows a tool's field names.
    """

    #: The name used in settings and by ``--format``.
    name: str

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode a micro-batch of raw message values."""
        ...

    def matches(self, sample: bytes) -> bool:
        """Tell whether one raw record looks like this format."""
        ...

    def read_file(self, path: Path) -> FlowBatch:
        """Read a whole file of this format (labels go to ``extras``)."""
        ...


def one_object_per_line(joined: bytes, n: int) -> bool:
    """Tell whether newline-joined values can be decoded in one pass, one object each.

    True when each of the ``n`` values joined by ``\\n`` starts with ``{`` and
    none holds a line break: decoding the lines then yields one object per
    value, or fails, in which case the values are decoded one by one.
    """
    return joined[:1] == b"{" and joined.count(b"\n") == n - 1 == joined.count(b"\n{")


def validate(batch: FlowBatch, now: float | None = None) -> Decoded:
    """Apply the checks every format shares, column-wise.

    Args:
        batch: Freshly decoded rows.
        now: Wall-clock time in epoch seconds (defaults to ``time.time()``).

    Returns:
        The rows that pass, and a reject naming the first problem of each
        row that does not.
    """
    n = len(batch)
    reason: npt.NDArray[np.object_] = np.full(n, None, dtype=object)
    clean = np.ones(n, dtype=bool)  # no problem found yet

    def flag(mask: npt.NDArray[np.bool_], why: str) -> None:
        hit = mask & clean
        if hit.any():
            reason[hit] = why
            clean[hit] = False

    for name in REQUIRED_FIELDS:
        col = batch.columns[name]
        missing = np.isnan(col) if col.dtype.kind == "f" else (col == None)  # noqa: E711
        flag(missing, f"missing required field '{name}'")
    for name, col in batch.columns.items():
        if col.dtype.kind == "f":
            flag(np.isinf(col), f"field '{name}' is infinite")
    for name in ("src_port", "dst_port"):
        col = batch.num(name)
        with np.errstate(invalid="ignore"):
            bad = (col < 0) | (col > 65535) | (np.floor(col) != col)
        flag(bad & ~np.isnan(col), f"field '{name}' is not a port number (0-65535)")
    for name in ("duration", "src_bytes", "dst_bytes", "src_pkts", "dst_pkts"):
        with np.errstate(invalid="ignore"):
            flag(batch.num(name) < 0, f"field '{name}' is negative")
    limit = (time.time() if now is None else now) + MAX_CLOCK_SKEW_S
    with np.errstate(invalid="ignore"):
        flag(batch.num("ts") > limit, "field 'ts' is more than a day in the future")
    for name in STRING_FIELDS:
        flag(
            _per_distinct(batch.columns[name], _too_long, missing=False),
            f"field '{name}' is longer than {MAX_TEXT_CHARS} characters",
        )
    for name in ("src_ip", "dst_ip"):
        # Absence is the required-field check's business.
        valid = _per_distinct(batch.columns[name], _valid_address, missing=True)
        flag(~valid, f"field '{name}' is not an IP address")

    bad_rows = np.flatnonzero(~clean)
    rejects = [Reject(int(batch.position[i]), str(reason[i])) for i in bad_rows]
    return Decoded(batch=batch if clean.all() else batch.take(clean), rejects=rejects)


_ADDRESS_CACHE: dict[str, bool] = {}
_ADDRESS_CACHE_LIMIT = 1 << 16


def _per_distinct(
    column: npt.NDArray[np.generic],
    test: Callable[[npt.NDArray[np.object_]], npt.NDArray[np.bool_]],
    missing: bool,
) -> npt.NDArray[np.bool_]:
    """``test`` of every value of a text column, evaluated once per distinct value.

    ``test`` takes an object array of values and returns one verdict each;
    ``missing`` is the verdict for ``None``.
    """
    try:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
    except TypeError:  # an unhashable value: a malformed record, so go value by value
        return np.array(
            [missing if v is None else bool(test(np.array([v], dtype=object))[0]) for v in column],
            dtype=bool,
        )
    verdicts = np.append(test(np.asarray(uniques, dtype=object)), False)
    out: npt.NDArray[np.bool_] = verdicts[codes]
    absent = codes < 0  # None, or a float NaN that is not text at all
    if absent.any():
        nan_like = np.array([v is not None for v in column[absent]], dtype=bool)
        out[absent] = ~nan_like if missing else False
    return out


def _too_long(values: npt.NDArray[np.object_]) -> npt.NDArray[np.bool_]:
    try:  # all text, the usual case: one C-level pass
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=values.shape[0])
        return lengths > MAX_TEXT_CHARS
    except TypeError:
        return np.array([isinstance(v, str) and len(v) > MAX_TEXT_CHARS for v in values], bool)


def _valid_address(values: npt.NDArray[np.object_]) -> npt.NDArray[np.bool_]:
    """Tell which values are IPv4 or IPv6 addresses (cached by value)."""
    import ipaddress

    cache = _ADDRESS_CACHE
    known = [cache.get(v) for v in values]
    if None not in known:
        return np.array(known, dtype=bool)
    for i, value in enumerate(values):
        if known[i] is not None:
            continue
        if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
            known[i] = False  # refused for its type or length; not worth a cache entry
            continue
        try:
            ipaddress.ip_address(value)
            ok = True
        except ValueError:
            ok = False
        if len(cache) >= _ADDRESS_CACHE_LIMIT:
            cache.clear()
        known[i] = cache[value] = ok
    return np.array(known, dtype=bool)
