"""The canonical flow schema every format adapter decodes into.

After an adapter has run, nothing downstream knows which tool produced a
record: every flow is described by the columns of :data:`FLOW_FIELDS`, held
column-wise in a :class:`FlowBatch`.

Conventions:
    * Numeric columns are ``float64`` arrays; ``NaN`` means "not reported".
    * Timestamps (``ts``) are seconds since the Unix epoch, UTC.
    * ``proto`` is the IANA protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    * Byte and packet counts are already multiplied by the sampling rate.
    * ``tcp_flags`` is the OR of all TCP flags seen (FIN=1, SYN=2, RST=4,
      PSH=8, ACK=16, URG=32, ECE=64, CWR=128).
    * ``conn_state`` uses Zeek's connection-state vocabulary (``S0``, ``SF``,
      ``REJ``, ...), the most widely documented one; adapters map to it.
    * String columns are ``object`` arrays of ``str`` or ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]
IndexArray = npt.NDArray[np.int64]

#: Numeric fields of a canonical flow, in schema order.
NUMERIC_FIELDS: Final = (
    "ts",
    "src_port",
    "dst_port",
    "proto",
    "duration",
    "src_bytes",
    "dst_bytes",
    "src_pkts",
    "dst_pkts",
    "tcp_flags",
    "sampling_rate",
)
#: String fields of a canonical flow, in schema order.
STRING_FIELDS: Final = ("src_ip", "dst_ip", "service", "conn_state")
#: Every canonical field.
FLOW_FIELDS: Final = NUMERIC_FIELDS + STRING_FIELDS
#: Fields without which a record cannot be scored.
REQUIRED_FIELDS: Final = ("ts", "src_ip", "dst_ip", "proto")

PROTOCOL_NUMBERS: Final[Mapping[str, int]] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
}

#: Zeek ``conn_state`` values that mean the connection attempt failed.
FAILED_STATES: Final = frozenset(
    {"S0", "REJ", "RSTO", "RSTOS0", "RSTR", "RSTRH", "SH", "SHR", "OTH"}
)


@dataclass(frozen=True)
class Reject:
    """A record that could not be decoded.

    Attributes:
        position: Index of the record in the input sequence given to the adapter.
        reason: What was wrong, in words an operator can act on.
    """

    position: int
    reason: str


@dataclass
class FlowBatch:
    """A micro-batch of canonical flows, column by column.

    Attributes:
        columns: One array per field of :data:`FLOW_FIELDS`, all of length ``n``.
        position: For each row, its index in the adapter's input (so the
            loop can map a row back to the Kafka message it came from).
        extras: Columns that are carried along but are never features, such
            as ``label`` or ``attack_type`` in labelled files.
    """

    columns: dict[str, npt.NDArray[np.generic]]
    position: IndexArray
    extras: dict[str, ObjectArray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def num(self, name: str) -> FloatArray:
        """Return a numeric column as ``float64``."""
        return self.columns[name].astype(np.float64, copy=False)  # type: ignore[return-value]

    def text(self, name: str) -> ObjectArray:
        """Return a string column (``object`` array of ``str`` or ``None``)."""
        return self.columns[name]  # type: ignore[return-value]

    def take(self, rows: npt.NDArray[np.bool_] | IndexArray) -> FlowBatch:
        """Return the rows selected by a boolean mask or an index array."""
        return FlowBatch(
            columns={k: v[rows] for k, v in self.columns.items()},
            position=self.position[rows],
            extras={k: v[rows] for k, v in self.extras.items()},
        )

    @classmethod
    def empty(cls) -> FlowBatch:
        """Return a batch with no rows."""
        return from_columns({}, 0)

    @classmethod
    def concat(cls, batches: Sequence[FlowBatch]) -> FlowBatch:
        """Stack batches row-wise; ``position`` is kept as given."""
        if not batches:
            return cls.empty()
        extras_keys = set.intersection(*(set(b.extras) for b in batches))
        return FlowBatch(
            columns={k: np.concatenate([b.columns[k] for b in batches]) for k in FLOW_FIELDS},
            position=np.concatenate([b.position for b in batches]),
            extras={k: np.concatenate([b.extras[k] for b in batches]) for k in sorted(extras_keys)},
        )


def from_columns(
    values: Mapping[str, Sequence[object] | npt.NDArray[np.generic]],
    n: int,
    position: IndexArray | None = None,
    extras: Mapping[str, Sequence[object] | npt.NDArray[np.generic]] | None = None,
) -> FlowBatch:
    """Build a :class:`FlowBatch`, filling absent fields with missing values.

    Args:
        values: Canonical field name to a sequence of ``n`` values. ``None``
            in a numeric column becomes ``NaN``.
        n: Number of rows.
        position: Input index of each row; ``0..n-1`` when omitted.
        extras: Non-feature columns to carry along.

    Returns:
        The batch, with every field of :data:`FLOW_FIELDS` present.
    """
    unknown = set(values) - set(FLOW_FIELDS)
    if unknown:
        raise ValueError(f"not canonical flow fields: {sorted(unknown)}")
    columns: dict[str, npt.NDArray[np.generic]] = {}
    for name in NUMERIC_FIELDS:
        columns[name] = _numeric(values.get(name), n)
    for name in STRING_FIELDS:
        columns[name] = _strings(values.get(name), n)
    if "sampling_rate" not in values:
        columns["sampling_rate"] = np.ones(n)
    pos = np.arange(n, dtype=np.int64) if position is None else position
    return FlowBatch(
        columns=columns,
        position=pos.astype(np.int64, copy=False),
        extras={k: _strings(v, n) for k, v in (extras or {}).items()},
    )


def _numeric(column: Sequence[object] | npt.NDArray[np.generic] | None, n: int) -> FloatArray:
    if column is None:
        return np.full(n, np.nan)
    if isinstance(column, np.ndarray) and column.dtype.kind in "fiub":
        return column.astype(np.float64, copy=False)
    if not isinstance(column, np.ndarray):
        try:  # the common case, nothing missing: one C-level conversion
            return np.array(column, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    return np.array([np.nan if v is None else v for v in column], dtype=np.float64)


def _strings(column: Sequence[object] | npt.NDArray[np.generic] | None, n: int) -> ObjectArray:
    out = np.empty(n, dtype=object)
    if column is not None:
        out[:] = list(column) if not isinstance(column, np.ndarray) else column
    return out


def protocol_numbers(values: Sequence[object]) -> FloatArray:
    """:func:`protocol_number` of a whole column, each distinct value mapped once."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    mapped = np.array([protocol_number(v) for v in uniques] + [np.nan], dtype=np.float64)
    return mapped[codes]


def protocol_number(value: object) -> float:
    """Map a protocol name or number to its IANA number (``NaN`` if unknown)."""
    if value is None:
        return float("nan")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    if text.isdigit():
        return float(text)
    return float(PROTOCOL_NUMBERS.get(text, np.nan))
