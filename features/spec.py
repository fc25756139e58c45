"""The declarative feature spec: which fields, which transforms, what order.

A :class:`FeatureSpec` names fields and transforms. Fitting it on training
rows gives a :class:`FittedSpec`, which turns raw columns into a float32
matrix of a fixed width and order, explains a column in the input's own
units, carries a schema hash, and is stored inside the model bundle.

:class:`FlowVectorizer` is the whole path from a :class:`FlowBatch` to a
matrix: derived columns, per-host context, then the fitted spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from features import context as ctx
from features.records import FLOW_FIELDS, FlowBatch
from features.transforms import Transform, make

F32 = npt.NDArray[np.float32]
RawColumns = dict[str, npt.NDArray[Any]]
TCP_FLAG_NAMES = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]


@dataclass(frozen=True)
class Field:
    """One input field and how it becomes columns.

    Attributes:
        name: Raw column name (canonical, derived or context).
        kind: Transform kind (``numeric``, ``onehot``, ``bits``, ``time_of_day``).
        params: Transform parameters before fitting.
        label: How an analyst reads the field in an explanation.
    """

    name: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


class SchemaMismatchError(ValueError):
    """A bundle's feature schema does not match the input it is given."""


def default_flow_spec(windows: tuple[float, ...] = ctx.DEFAULT_WINDOWS) -> list[Field]:
    """The flow feature spec used unless a model is trained with another."""
    numeric = {"log": True, "clip": 5.0}
    fields = [
        Field("duration", "numeric", numeric, "duration (s)"),
        Field("src_bytes", "numeric", numeric, "bytes sent"),
        Field("dst_bytes", "numeric", numeric, "bytes received"),
        Field("src_pkts", "numeric", numeric, "packets sent"),
        Field("dst_pkts", "numeric", numeric, "packets received"),
        Field("src_bytes_per_pkt", "numeric", numeric, "bytes per packet sent"),
        Field("dst_bytes_per_pkt", "numeric", numeric, "bytes per packet received"),
        Field("proto", "onehot", {"max_values": 8}, "protocol"),
        Field("dst_port", "onehot", {"max_values": 24, "buckets": 8}, "destination port"),
        Field("src_port_range", "onehot", {"max_values": 4}, "source port range"),
        Field("service", "onehot", {"max_values": 16}, "service"),
        Field("conn_state", "onehot", {"max_values": 16}, "connection state"),
        Field("tcp_flags", "bits", {"names": TCP_FLAG_NAMES}, "TCP flags"),
        Field("ts", "time_of_day", {}, "hour of day (UTC)"),
    ]
    for name in ctx.feature_names(windows):
        fields.append(Field(name, "numeric", numeric, _context_label(name)))
    return fields


def _context_label(name: str) -> str:
    words = {
        "conn_rate": "connections/s from this host",
        "dst_hosts": "new destination hosts",
        "dst_ports": "new destination ports",
        "failed_share": "share of failed connections",
        "bytes_rate": "bytes/s from this host",
        "pair_conns": "connections to this destination",
        "pair_regularity": "regularity of contacts to this destination",
    }
    for prefix, text in words.items():
        if name.startswith(prefix):
            suffix = name[len(prefix) + 1 :]
            return f"{text} in {suffix}" if suffix else text
    return name


@dataclass
class FittedSpec:
    """A fitted feature spec: raw columns in, fixed-order float32 matrix out."""

    fields: list[Field]
    transforms: list[Transform]
    windows: tuple[float, ...] = ctx.DEFAULT_WINDOWS
    #: What a row is: ``flow`` (canonical flows with context), ``table`` (a
    #: labelled data set's own columns), or another registered kind.
    record: str = "flow"

    @classmethod
    def fit(
        cls,
        fields: Sequence[Field],
        raw: Mapping[str, npt.NDArray[Any]],
        windows: tuple[float, ...] = ctx.DEFAULT_WINDOWS,
        record: str = "flow",
    ) -> FittedSpec:
        """Fit every field's transform on training columns."""
        transforms = [make(f.kind, dict(f.params)).fit(raw[f.name]) for f in fields]
        return cls(list(fields), transforms, windows, record)

    @property
    def width(self) -> int:
        """Number of output columns."""
        return sum(t.width() for t in self.transforms)

    @property
    def field_of_column(self) -> npt.NDArray[np.int64]:
        """For each output column, the index of the field it came from."""
        return np.repeat(np.arange(len(self.fields)), [t.width() for t in self.transforms])

    def transform(self, raw: Mapping[str, npt.NDArray[Any]]) -> F32:
        """Turn raw columns into the model's input matrix (rows x width)."""
        missing = [f.name for f in self.fields if f.name not in raw]
        if missing:
            raise SchemaMismatchError(f"input lacks fields the model needs: {', '.join(missing)}")
        parts = [
            t.transform(raw[f.name]) for f, t in zip(self.fields, self.transforms, strict=True)
        ]
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    def schema(self) -> dict[str, Any]:
        """What fixes the vector's length and order (hashed into the bundle)."""
        return {
            "fields": [
                {"name": f.name, "kind": f.kind, "width": t.width()}
                for f, t in zip(self.fields, self.transforms, strict=True)
            ],
            "windows": list(self.windows),
            # Flow specs leave their kind out, so that bundles written before
            # there were record kinds keep their schema hash (and load).
            **({"record": self.record} if self.record != "flow" else {}),
        }

    @property
    def schema_hash(self) -> str:
        """SHA-256 of :meth:`schema`, canonical JSON."""
        text = json.dumps(self.schema(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def check_schema(self, expected: Mapping[str, Any]) -> None:
        """Refuse a schema that differs from ``expected``, naming the fields.

        Raises:
            SchemaMismatchError: Listing every field added, removed or changed.
        """
        mine = {f["name"]: f for f in self.schema()["fields"]}
        theirs = {f["name"]: f for f in expected.get("fields", [])}
        problems = [f"missing field {n!r}" for n in theirs if n not in mine]
        problems += [f"unexpected field {n!r}" for n in mine if n not in theirs]
        problems += [
            f"field {n!r} is {mine[n]['kind']}x{mine[n]['width']}, "
            f"expected {theirs[n]['kind']}x{theirs[n]['width']}"
            for n in mine
            if n in theirs and mine[n] != theirs[n]
        ]
        if list(mine) != list(theirs) and not problems:
            problems.append("fields are in a different order")
        if list(self.windows) != list(expected.get("windows", self.windows)):
            problems.append(f"context windows {list(self.windows)} != {expected['windows']}")
        if problems:
            raise SchemaMismatchError("feature schema mismatch: " + "; ".join(problems))

    def explain(
        self,
        raw_row: Mapping[str, Any],
        reconstructed: F32,
        errors: F32,
        top: int = 3,
    ) -> list[dict[str, Any]]:
        """The fields reconstructed worst for one row, in original units.

        Args:
            raw_row: Raw value of each field for this row.
            reconstructed: The model's output row (width,).
            errors: Per-column error contributions for this row (width,).
            top: How many fields to return.

        Returns:
            Dicts with ``name``, ``label``, ``observed``, ``expected`` and
            ``share`` (this field's part of the row's total error, 0-1).
        """
        raw = {name: _column(value) for name, value in raw_row.items()}
        return self.explain_rows(
            raw, np.zeros(1, np.int64), reconstructed[None, :], errors[None, :], top
        )[0]

    def explain_rows(
        self,
        raw: Mapping[str, npt.NDArray[Any]],
        rows: npt.NDArray[np.int64],
        reconstructed: F32,
        errors: F32,
        top: int = 3,
    ) -> list[list[dict[str, Any]]]:
        """:meth:`explain` for the rows ``rows`` of a batch.

        Args:
            raw: The batch's raw columns.
            rows: Which rows to explain (indexes into ``raw``, ``reconstructed`` and ``errors``).
            reconstructed: The model's output for the batch (rows x width).
            errors: Per-column error contributions for the batch (rows x width).
            top: How many fields to return per row.

        The per-field error sums and their ranking are computed for all rows
        at once; only each row's top fields are then looked at one by one.
        """
        widths = np.array([t.width() for t in self.transforms], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        # Each field's columns summed for every row at once. (Not a product with
        # a 0/1 matrix: BLAS would start threads of its own for it.)
        per_field = np.add.reduceat(np.asarray(errors[rows], dtype=np.float64), starts[:-1], axis=1)
        per_field[:, widths == 0] = 0.0  # reduceat gives an empty block the next column
        starts = starts.tolist()
        totals = per_field.sum(axis=1)
        totals[totals == 0] = 1.0
        shares = (per_field / totals[:, None]).tolist()
        ranked = np.argsort(-per_field, axis=1, kind="stable")[:, :top].tolist()
        out = []
        for r, i in enumerate(rows.tolist()):
            reasons = []
            for k in ranked[r]:
                f, t = self.fields[k], self.transforms[k]
                column = raw.get(f.name)
                reasons.append(
                    {
                        "name": f.name,
                        "label": f.label or f.name,
                        "observed": _plain(column[i] if column is not None else None),
                        "expected": _plain(t.expected(reconstructed[i, starts[k] : starts[k + 1]])),
                        "share": round(shares[r][k], 4),
                    }
                )
            out.append(reasons)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the bundle."""
        return {
            "record": self.record,
            "windows": list(self.windows),
            "fields": [
                {"name": f.name, "kind": f.kind, "label": f.label, "params": t.to_dict()}
                for f, t in zip(self.fields, self.transforms, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedSpec:
        """Rebuild a fitted spec stored by :meth:`to_dict`."""
        fields = [Field(d["name"], d["kind"], {}, d.get("label", "")) for d in data["fields"]]
        transforms = [make(d["kind"], dict(d["params"])) for d in data["fields"]]
        windows = tuple(data.get("windows", ctx.DEFAULT_WINDOWS))
        return cls(fields, transforms, windows, data.get("record", "flow"))


def _column(value: Any) -> npt.NDArray[Any]:
    """One raw value as a one-row column."""
    column = np.empty(1, dtype=object)
    column[0] = value
    return column


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if np.isnan(v) else round(v, 4)
    if isinstance(value, np.integer):
        return int(value)
    return value


DERIVED_FIELDS = ("src_bytes_per_pkt", "dst_bytes_per_pkt", "src_port_range")


def check_inputs(spec: FittedSpec) -> None:
    """Refuse a spec that needs fields the flow path does not produce.

    Raises:
        SchemaMismatchError: Naming each field the spec needs and the input lacks.
    """
    if spec.record == "packet":
        from features.packets import check_packet_inputs  # packets builds on this module

        check_packet_inputs(spec)
        return
    if spec.record != "flow":
        raise SchemaMismatchError(
            f"the model was trained on {spec.record} records; serve scores flows: "
            "train it on flow records (for example --format netfraud or zeek)"
        )
    available = set(FLOW_FIELDS) | set(DERIVED_FIELDS) | set(ctx.feature_names(spec.windows))
    missing = [f.name for f in spec.fields if f.name not in available]
    if missing:
        raise SchemaMismatchError(
            "the model needs fields this input does not provide: "
            + ", ".join(missing)
            + "; train the model on records of this format"
        )


def derived_columns(batch: FlowBatch) -> RawColumns:
    """Canonical columns plus the few derived ones the default spec uses."""
    raw: RawColumns = dict(batch.columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        for side in ("src", "dst"):
            pkts = batch.num(f"{side}_pkts")
            per = batch.num(f"{side}_bytes") / pkts
            raw[f"{side}_bytes_per_pkt"] = np.where(pkts > 0, per, np.nan)
    sport = batch.num("src_port")
    raw["src_port_range"] = np.select(
        [np.isnan(sport), sport < 1024, sport < 49152],
        ["none", "well-known", "registered"],
        "dynamic",
    ).astype(object)
    return raw


@dataclass
class Vectors:
    """Model input for one batch, and what is needed to explain it."""

    matrix: F32
    raw: RawColumns
    warming: npt.NDArray[np.bool_]


class FlowVectorizer:
    """FlowBatch to model matrix: derived columns, context, fitted spec.

    The context state is the only mutable part; keep one vectorizer per
    consumer so that state follows partition ownership.
    """

    def __init__(self, spec: FittedSpec, context: ctx.FlowContext | None = None) -> None:
        self.spec = spec
        # Not ``context or ...``: an empty context has length 0 and is falsy, and
        # replacing it would drop its max_keys and idle_timeout settings.
        self.context = context if context is not None else ctx.FlowContext(windows=spec.windows)

    def __call__(self, batch: FlowBatch) -> Vectors:
        raw = derived_columns(batch)
        context_columns, warming = self.context.update(batch)
        raw.update(context_columns)
        return Vectors(self.spec.transform(raw), raw, warming)


def fit_vectorizer(
    batch: FlowBatch,
    fields: Sequence[Field] | None = None,
    windows: tuple[float, ...] = ctx.DEFAULT_WINDOWS,
    fit_rows: npt.NDArray[np.bool_] | None = None,
) -> tuple[FlowVectorizer, Vectors]:
    """Fit a vectorizer on training flows given in time order.

    Context is computed over every row (so that benign rows see the traffic
    around them), but transforms are fitted on ``fit_rows`` only.

    Returns:
        The vectorizer (with its context state reset) and the training vectors.
    """
    context = ctx.FlowContext(windows=windows)
    raw = derived_columns(batch)
    columns, warming = context.update(batch)
    raw.update(columns)
    rows = np.ones(len(batch), bool) if fit_rows is None else fit_rows
    spec = FittedSpec.fit(
        fields or default_flow_spec(windows), {k: v[rows] for k, v in raw.items()}, windows
    )
    vectorizer = FlowVectorizer(spec)
    return vectorizer, Vectors(spec.transform(raw), raw, warming)


class Vectorizer(Protocol):
    """Turns a batch into model input; ``context`` is its mutable state, if any."""

    spec: FittedSpec
    context: Any

    def __call__(self, batch: FlowBatch) -> Vectors: ...


def _packet_vectorizer(spec: FittedSpec, state: Any) -> Vectorizer:
    from features.packets import PacketVectorizer  # packets builds on this module

    return PacketVectorizer.reuse(spec, state)


#: Record kind -> factory of a vectorizer for a fitted spec and carried-over state.
VECTORIZERS: dict[str, Callable[[FittedSpec, Any], Vectorizer]] = {
    "flow": lambda spec, state: FlowVectorizer(
        spec, state if isinstance(state, ctx.FlowContext) else None
    ),
    "packet": _packet_vectorizer,
}


def make_vectorizer(spec: FittedSpec, state: Any = None) -> Vectorizer:
    """The vectorizer for a spec's record kind, reusing compatible state."""
    try:
        factory = VECTORIZERS[spec.record]
    except KeyError:
        raise SchemaMismatchError(
            f"no vectorizer for {spec.record!r} records; known: {sorted(VECTORIZERS)}"
        ) from None
    return factory(spec, state)
