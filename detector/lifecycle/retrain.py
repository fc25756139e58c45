"""Retraining: recent traffic in, a challenger trained, gated, and promoted or kept.

The steps:

1. **Window.** The last ``[retrain] window_hours`` of the archive, ending at
   its newest row (synthetic and replayed traffic carries old timestamps, so
   the window follows the data, not the wall clock); or a range of a Kafka
   topic (``--from-topic``), where rows the champion scores at or above its
   threshold are dropped first, as the archive would have. Either way no
   flagged record enters training unreviewed.
2. **Challenger.** A ``holdout_share`` of the window is held out: every k-th
   ten-minute block, so that it spans every hour of day the window covers (the
   newest rows alone would favour whichever model had seen that time of day).
   :func:`~detector.model.fit.train_bundle` trains on the other rows, with
   context features computed over the whole window in time order, and with
   the champion's architecture and calibrated false-positive rate.
3. **Evaluation.** Champion and challenger score the *same* held-out rows
   (context features computed over the whole window, in time order): each
   one's false-positive rate at its own threshold, and score quantiles. With
   ``validation_file``, both also score that labelled file: detection rate at
   the threshold, false-positive rate and AUROC.
4. **Gate.** The challenger must need only the fields the flow path provides
   (:func:`~features.spec.check_inputs`); its false-positive rate may be at
   most ``max_fpr_ratio`` times the champion's; its detection rate on the
   labelled file may fall at most ``max_detection_drop``. Without a champion
   the first challenger is promoted.
5. **Record.** The challenger is stored in the registry either way (kept ones
   can still be promoted by hand). The decision, its reasons, every figure and
   the drift of the window against the champion's training snapshot go to
   ``<registry>/decisions/<timestamp>.json`` and, since a bundle is sealed,
   beside it in ``<registry>/annotations/<version>.json``. One log line,
   ``retrain_decision``, carries the outcome.

Why the champion's false-positive rate has a floor: archived rows are the ones
the champion scored *below* its threshold, so on them its measured rate is
close to zero by construction, and any challenger would look worse. The
comparison therefore uses the larger of the champion's measured rate and its
calibrated target, plus two standard errors of that rate on the held-out rows
(sampling noise on a few thousand rows must not decide a promotion).

Exit codes of ``netfraud retrain``: **0** challenger promoted, **3** champion
kept (a normal outcome; reasons in the decision record), **1** failed (no
usable data, unreadable registry, another retrain running); nothing changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from detector.errors import (
    ConfigError,
    NetfraudError,
    RegistryBusyError,
    TrainingDataError,
    TransportError,
)
from detector.lifecycle.drift import SCORE, Reference, drift_report
from detector.logs import get_logger
from detector.model.autoencoder import AutoencoderConfig
from detector.model.bundle import Bundle
from detector.model.fit import TrainOptions, train_bundle
from detector.model.registry import Registry
from detector.settings import RetrainSettings, Settings
from detector.stream import archive
from features.context import DEFAULT_WINDOWS
from features.records import FlowBatch
from features.spec import FlowVectorizer, SchemaMismatchError, Vectors, check_inputs

log = get_logger("retrain")

EXIT_PROMOTED = 0
EXIT_KEPT = 3
EXIT_FAILED = 1
#: Length of the blocks of time that are held out in turn, seconds.
HOLDOUT_BLOCK_S = 600.0
#: Rows scored per forward pass while evaluating.
SCORE_CHUNK = 65_536
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


# --- the window -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Recent traffic to learn from, in time order.

    Attributes:
        batch: The rows, sorted by ``ts``.
        source: Where they came from, in words.
        excluded_flagged: Rows dropped because the champion flags them.
    """

    batch: FlowBatch
    source: str
    excluded_flagged: int = 0


def window_from_archive(
    path: Path, hours: float, since: float | None = None, until: float | None = None
) -> Window:
    """The archive's rows in ``[since, until)``, by default its newest ``hours``.

    Raises:
        TrainingDataError: The archive is missing or holds no rows.
    """
    if not path.is_dir():
        raise TrainingDataError(
            f"archive {path} does not exist; run serve with [archive] path set, "
            "or retrain --from-topic"
        )
    if since is None:
        end = until if until is not None else archive.newest_ts(path)
        if end is None:
            raise TrainingDataError(f"archive {path} holds no rows yet")
        since = end - hours * 3600
    batch = archive.read_archive(path, since, until)
    return Window(batch, f"archive {path} [{_iso(since)}, {_iso(until) if until else 'newest'}]")


def window_from_topic(
    settings: Settings,
    topic: str,
    since: float,
    until: float | None,
    champion: Bundle | None,
) -> Window:
    """Records of ``topic`` with Kafka timestamps in ``[since, until)``.

    Rows the champion scores at or above its threshold are dropped (the
    archive never holds them either).
    """
    batch = read_topic_range(settings, topic, since, until)
    excluded = 0
    if champion is not None and len(batch):
        below = _scores(champion, _vectors(champion, batch).matrix, "cpu") < champion.threshold
        excluded = int((~below).sum())
        batch = batch.take(below)
    source = f"topic {topic} [{_iso(since)}, {_iso(until) if until else 'end'}]"
    return Window(batch, source, excluded)


def read_topic_range(
    settings: Settings, topic: str, since: float, until: float | None, idle_s: float = 30.0
) -> FlowBatch:
    """Decode the records of ``topic`` whose Kafka timestamps fall in ``[since, until)``.

    Offsets are found with ``offsets_for_times``, so only the range is read.
    Records that do not decode are skipped. Rows come back sorted by ``ts``.

    Raises:
        TrainingDataError: The topic does not exist.
        TransportError: The broker stopped answering for ``idle_s`` seconds.
    """
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from detector.stream.kafka_python import connection_config
    from features.formats import get_adapter

    consumer = KafkaConsumer(**connection_config(settings), group_id=None, enable_auto_commit=False)
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise TrainingDataError(f"topic {topic!r} does not exist or has no partitions")
        parts = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        starts = _offsets_at(consumer, ends, since)
        stops = _offsets_at(consumer, ends, until) if until is not None else ends
        values = _consume_ranges(consumer, starts, stops, idle_s)
    finally:
        consumer.close()
    batch = get_adapter(settings.topics.format_of(topic)).decode(values).batch
    return batch.take(np.argsort(batch.num("ts"), kind="stable"))


def _offsets_at(consumer: Any, ends: dict[Any, int], when: float) -> dict[Any, int]:
    found = consumer.offsets_for_times({tp: int(when * 1000) for tp in ends})
    return {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in ends}


def _consume_ranges(
    consumer: Any, starts: dict[Any, int], stops: dict[Any, int], idle_s: float
) -> list[bytes]:
    open_parts = {tp for tp in starts if starts[tp] < stops[tp]}
    for tp in starts:
        consumer.seek(tp, starts[tp])
    consumer.pause(*[tp for tp in starts if tp not in open_parts])
    values: list[bytes] = []
    last_progress = time.monotonic()
    while open_parts:
        for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
            values += [r.value for r in records if r.offset < stops[tp] and r.value]
            last_progress = time.monotonic()
        for tp in list(open_parts):
            if consumer.position(tp) >= stops[tp]:
                open_parts.discard(tp)
                consumer.pause(tp)
        if time.monotonic() - last_progress > idle_s:
            raise TransportError(f"no records from the broker for {idle_s:.0f} s while reading")
    return values


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """A model's figures on a labelled file (positives are attacks)."""

    detection_rate: float
    fpr: float
    auroc: float
    attacks: int
    benign: int


@dataclass(frozen=True)
class Figures:
    """How one model did on the held-out rows (and the labelled file, if any).

    Attributes:
        version: The bundle's version.
        threshold: Its threshold (scores at or above it alert).
        target_fpr: The false-positive rate it was calibrated for.
        holdout_fpr: Share of held-out rows at or above its threshold.
        holdout_rows: How many rows were held out.
        score_quantiles: Quantiles of score / threshold on the held-out rows.
        labelled: Figures on the validation file, when one is configured.
    """

    version: str
    threshold: float
    target_fpr: float
    holdout_fpr: float
    holdout_rows: int
    score_quantiles: dict[str, float]
    labelled: Labelled | None = None


@dataclass(frozen=True)
class Validation:
    """A labelled file: its rows in time order and which of them are attacks."""

    batch: FlowBatch
    attack: Mask
    name: str


def load_validation(settings: RetrainSettings) -> Validation | None:
    """The configured validation file, or ``None``.

    Raises:
        TrainingDataError: The file has no labels, or no attacks or no benign rows.
    """
    if settings.validation_file is None:
        return None
    from detector.tools.train import load_labelled

    path = settings.validation_file
    if not path.is_file():
        raise TrainingDataError(f"validation file {path} not found ([retrain] validation_file)")
    batch, normal = load_labelled(path, settings.validation_format)
    if normal is None or normal.all() or not normal.any():
        raise TrainingDataError(
            f"validation file {path} needs labelled attacks and benign rows "
            f"(label column of format {settings.validation_format!r})"
        )
    return Validation(batch, ~normal, path.name)


def evaluate(
    bundle: Bundle,
    window: FlowBatch,
    holdout: Mask,
    validation: Validation | None,
    device: str = "cpu",
) -> tuple[Figures, Vectors, F64]:
    """Score the window's held-out rows (and the validation file) with ``bundle``.

    Returns:
        The figures, and the held-out rows' vectors and scores (for drift).
    """
    vectors = _vectors(bundle, window)
    held = Vectors(
        vectors.matrix[holdout],
        {k: v[holdout] for k, v in vectors.raw.items()},
        vectors.warming[holdout],
    )
    scores = _scores(bundle, held.matrix, device)
    ratio = scores / bundle.threshold
    levels = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
    figures = Figures(
        version=bundle.version,
        threshold=bundle.threshold,
        target_fpr=bundle.calibration.target_fpr,
        holdout_fpr=float(np.mean(scores >= bundle.threshold)),
        holdout_rows=int(scores.size),
        score_quantiles={k: round(float(np.quantile(ratio, q)), 4) for k, q in levels.items()},
        labelled=_labelled(bundle, validation, device) if validation else None,
    )
    return figures, held, scores


def _labelled(bundle: Bundle, validation: Validation, device: str) -> Labelled:
    scores = _scores(bundle, _vectors(bundle, validation.batch).matrix, device)
    attack = validation.attack
    flagged = scores >= bundle.threshold
    return Labelled(
        detection_rate=float(flagged[attack].mean()),
        fpr=float(flagged[~attack].mean()),
        auroc=auroc(scores, attack),
        attacks=int(attack.sum()),
        benign=int((~attack).sum()),
    )


def auroc(scores: F64, positive: Mask) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); ``nan`` without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct score: ranks of the tied run, averaged.
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    ranks = average[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _vectors(bundle: Bundle, batch: FlowBatch) -> Vectors:
    return FlowVectorizer(bundle.spec)(batch)


def _scores(bundle: Bundle, matrix: npt.NDArray[np.float32], device: str) -> F64:
    scorer = bundle.scorer(device)
    parts = [
        scorer.score(matrix[i : i + SCORE_CHUNK]).scores
        for i in range(0, matrix.shape[0], SCORE_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


# --- the gate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatePolicy:
    """What a challenger must do to replace the champion (see ``[retrain]``)."""

    max_fpr_ratio: float = 1.25
    max_detection_drop: float = 0.02

    @classmethod
    def from_settings(cls, settings: RetrainSettings) -> GatePolicy:
        return cls(settings.max_fpr_ratio, settings.max_detection_drop)


@dataclass(frozen=True)
class Check:
    """One condition of the gate and how it came out."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: promote or not, and why."""

    promote: bool
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        """The failed checks when kept; every check when promoted."""
        failed = [c.detail for c in self.checks if not c.passed]
        return failed or [c.detail for c in self.checks]


def gate(
    challenger: Figures,
    champion: Figures | None,
    policy: GatePolicy,
    schema_error: str | None = None,
    same_data: bool = False,
) -> Verdict:
    """Decide whether ``challenger`` replaces ``champion``.

    Args:
        challenger: The new model's figures.
        champion: The figures of the model in service (``None`` if there is none).
        policy: Allowed false-positive ratio and detection drop.
        schema_error: Why the challenger cannot read the input, if it cannot.
        same_data: The challenger was fitted on exactly the champion's rows
            (a rerun with nothing new archived): kept, to avoid churn.
    """
    checks = [
        Check(
            "schema",
            schema_error is None,
            f"feature schema: {schema_error}" if schema_error else "feature schema: compatible",
        )
    ]
    if champion is None:
        checks.append(Check("champion", True, "no champion in service: first model is promoted"))
        return Verdict(all(c.passed for c in checks), tuple(checks))
    if same_data:
        checks.append(
            Check("new_data", False, "fitted on the same rows as the champion: nothing new")
        )
    checks.append(
        _fpr_check(
            "fpr_recent",
            "recent traffic",
            challenger.holdout_fpr,
            champion.holdout_fpr,
            champion.target_fpr,
            challenger.holdout_rows,
            policy,
        )
    )
    ours, theirs = challenger.labelled, champion.labelled
    if ours is not None and theirs is not None:
        checks.append(
            _fpr_check(
                "fpr_labelled",
                "labelled benign rows",
                ours.fpr,
                theirs.fpr,
                champion.target_fpr,
                ours.benign,
                policy,
            )
        )
        floor = theirs.detection_rate - policy.max_detection_drop
        checks.append(
            Check(
                "detection",
                ours.detection_rate >= floor,
                f"detection rate on labelled attacks {ours.detection_rate:.4f} "
                f"{'>=' if ours.detection_rate >= floor else '<'} champion's "
                f"{theirs.detection_rate:.4f} - {policy.max_detection_drop} "
                f"(AUROC {ours.auroc:.4f} vs {theirs.auroc:.4f})",
            )
        )
    return Verdict(all(c.passed for c in checks), tuple(checks))


def _fpr_check(
    name: str,
    where: str,
    challenger_fpr: float,
    champion_fpr: float,
    champion_target: float,
    rows: int,
    policy: GatePolicy,
) -> Check:
    reference = max(champion_fpr, champion_target)
    margin = 2 * math.sqrt(reference * (1 - reference) / max(rows, 1))
    limit = policy.max_fpr_ratio * reference + margin
    passed = challenger_fpr <= limit
    return Check(
        name,
        passed,
        f"false-positive rate on {where} {challenger_fpr:.4f} {'<=' if passed else '>'} "
        f"{policy.max_fpr_ratio} x {reference:.4f} + {margin:.4f} (champion measured "
        f"{champion_fpr:.4f}, calibrated for {champion_target:.4f}; {rows} rows)",
    )


def schema_problem(bundle: Bundle) -> str | None:
    """Why the bundle cannot score the flow path's input, or ``None``."""
    try:
        check_inputs(bundle.spec)
    except SchemaMismatchError as exc:
        return str(exc)
    return None


# --- the decision ---------------------------------------------------------------------------


@dataclass
class Decision:
    """What a retrain decided, with everything that went into it."""

    promoted: bool
    challenger: str
    champion: str | None
    verdict: Verdict
    figures: dict[str, Figures | None]
    window: dict[str, Any]
    drift: dict[str, Any] | None
    policy: GatePolicy
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    record: Path | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTED if self.promoted else EXIT_KEPT

    @property
    def in_service(self) -> str | None:
        return self.challenger if self.promoted else self.champion

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the decision record."""
        return {
            "decision": "promoted" if self.promoted else "kept",
            "exit_code": self.exit_code,
            "decided_at": self.decided_at,
            "challenger": self.challenger,
            "champion": self.champion,
            "in_service": self.in_service,
            "reasons": self.verdict.reasons,
            "checks": [dataclasses.asdict(c) for c in self.verdict.checks],
            "figures": {k: dataclasses.asdict(v) if v else None for k, v in self.figures.items()},
            "window": self.window,
            "drift": self.drift,
            "policy": dataclasses.asdict(self.policy),
        }


def record_decision(registry: Registry, decision: Decision) -> Path:
    """Write the decision to ``decisions/<timestamp>.json`` and beside the challenger."""
    document = json.dumps(decision.to_dict(), indent=1, allow_nan=False, default=_plain)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = _write_atomically(registry.root / "decisions" / f"{stamp}.json", document)
    _write_atomically(registry.root / "annotations" / f"{decision.challenger}.json", document)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _write_atomically(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


# --- the whole job --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """Where this run's window comes from (defaults: the archive's newest hours).

    Attributes:
        topic: Read the window from this Kafka topic instead of the archive.
        since: Start of the window, epoch seconds (Kafka timestamps for a topic).
        until: End of the window, exclusive (``None``: the newest data).
        seed: Seeds the split and the challenger's weights.
    """

    topic: str | None = None
    since: float | None = None
    until: float | None = None
    seed: int = 0


def retrain(
    settings: Settings, request: Request | None = None, display: Display | None = None
) -> Decision:
    """Train a challenger on recent traffic and promote it if it passes the gate.

    Raises:
        NetfraudError: Nothing was decided and nothing promoted (the subclass
            says why: no usable window, a champion that does not load,
            another retrain holding the lock).
    """
    request = request or Request()
    display = display or Display(enabled=False)
    registry = Registry(settings.model.registry)
    with _exclusive(registry):
        display.step("reading the model in service")
        champion = registry.load() if registry.current() else None
        display.step("loading the training window")
        window = _load_window(settings, request, champion)
        holdout = split_window(window.batch, settings.retrain)
        log.info(
            "retrain_started",
            source=window.source,
            rows=len(window.batch),
            champion=champion.version if champion else None,
        )
        challenger = _train(settings, request, ~holdout, champion, window, display)
        display.step("evaluating champion and challenger")
        decision = _decide(settings, registry, window, holdout, champion, challenger)
        display.step("recording the decision")
        registry.publish(challenger)
        if decision.promoted:
            registry.promote(challenger.version)
        decision.record = record_decision(registry, decision)
    _log_decision(decision)
    return decision


def split_window(
    batch: FlowBatch, settings: RetrainSettings, block_s: float = HOLDOUT_BLOCK_S
) -> Mask:
    """The held-out rows: every k-th block of ``block_s`` seconds (k = 1 / holdout_share).

    A window too short for that many blocks holds out its newest rows instead.

    Raises:
        TrainingDataError: Fewer than ``min_rows`` rows.
    """
    n = len(batch)
    if n < settings.min_rows:
        raise TrainingDataError(
            f"only {n} usable rows in the window, {settings.min_rows} needed "
            "([retrain] min_rows, window_hours)"
        )
    every = max(round(1 / settings.holdout_share), 2)
    ts = batch.num("ts")
    block = np.floor((ts - np.nanmin(ts)) / block_s).astype(np.int64)
    holdout: Mask = np.asarray(block % every == every - 1, dtype=bool)
    if not 0 < holdout.sum() < n:
        holdout = np.arange(n) >= n - max(int(n * settings.holdout_share), 1)
    return holdout


def _load_window(settings: Settings, request: Request, champion: Bundle | None) -> Window:
    if request.topic is not None:
        if request.since is None:
            raise ConfigError("retrain --from-topic needs --since (ISO 8601 time)")
        return window_from_topic(settings, request.topic, request.since, request.until, champion)
    if settings.archive.path is None:
        raise ConfigError(
            "no archive to retrain from: set [archive] path (NETFRAUD_ARCHIVE__PATH, "
            "--archive-dir) or use --from-topic"
        )
    return window_from_archive(
        settings.archive.path, settings.retrain.window_hours, request.since, request.until
    )


def _train(
    settings: Settings,
    request: Request,
    train: Mask,
    champion: Bundle | None,
    window: Window,
    display: Display,
) -> Bundle:
    config = champion.model.config if champion else AutoencoderConfig(seed=request.seed)
    if settings.retrain.max_epochs:
        config = dataclasses.replace(config, max_epochs=settings.retrain.max_epochs)
    options = TrainOptions(
        target_fpr=champion.calibration.target_fpr if champion else 0.01,
        device=settings.model.device,
        seed=request.seed,
    )
    advance = display.epochs(config.max_epochs)
    try:
        return train_bundle(
            window.batch,
            train,
            config,
            options,
            windows=champion.spec.windows if champion else DEFAULT_WINDOWS,
            progress=lambda epoch, loss, val: advance(),
            metadata={
                "source": window.source,
                "format": "archive" if request.topic is None else settings.topics.format,
                "retrained_from": champion.version if champion else None,
                "held_out_rows": int((~train).sum()),
            },
        )
    except ValueError as exc:
        raise TrainingDataError(f"cannot train on the window: {exc}") from exc


def _decide(
    settings: Settings,
    registry: Registry,
    window: Window,
    holdout: Mask,
    champion: Bundle | None,
    challenger: Bundle,
) -> Decision:
    validation = load_validation(settings.retrain)
    device = settings.model.device
    ours, _, _ = evaluate(challenger, window.batch, holdout, validation, device)
    theirs, drift = None, None
    if champion is not None:
        theirs, held, scores = evaluate(champion, window.batch, holdout, validation, device)
        drift = _drift(champion, held, scores)
    policy = GatePolicy.from_settings(settings.retrain)
    same = champion is not None and _fingerprint(champion) == _fingerprint(challenger)
    verdict = gate(ours, theirs, policy, schema_problem(challenger), same_data=same)
    ts = window.batch.num("ts")
    return Decision(
        promoted=verdict.promote,
        challenger=challenger.version,
        champion=champion.version if champion else None,
        verdict=verdict,
        figures={"challenger": ours, "champion": theirs},
        window={
            "source": window.source,
            "rows": len(window.batch),
            "train_rows": int((~holdout).sum()),
            "holdout_rows": int(holdout.sum()),
            "start": _iso(float(ts.min())),
            "end": _iso(float(ts.max())),
            "excluded_flagged": window.excluded_flagged,
            "validation_file": str(settings.retrain.validation_file or "") or None,
        },
        drift=drift,
        policy=policy,
    )


def _fingerprint(bundle: Bundle) -> Any:
    return bundle.metadata.get("data_fingerprint")


def _drift(champion: Bundle, held: Vectors, scores: F64) -> dict[str, Any]:
    reference = Reference.of(champion)
    if reference is None:
        return {"against": champion.version, "note": "champion has no reference histograms"}
    report = drift_report(reference, held.raw, scores)
    score = report.pop(SCORE, None)
    top = {k: round(v, 4) for k, v in list(report.items())[:5] if not math.isnan(v)}
    return {"against": champion.version, "top_features_psi": top, "score_psi": score}


def _log_decision(decision: Decision) -> None:
    figures = decision.figures
    log.info(
        "retrain_decision",
        decision="promoted" if decision.promoted else "kept",
        challenger=decision.challenger,
        champion=decision.champion,
        in_service=decision.in_service,
        reasons=decision.verdict.reasons,
        challenger_fpr=figures["challenger"].holdout_fpr if figures["challenger"] else None,
        champion_fpr=figures["champion"].holdout_fpr if figures["champion"] else None,
        drift_top=(decision.drift or {}).get("top_features_psi"),
        record=str(decision.record),
    )


@contextmanager
def _exclusive(registry: Registry) -> Iterator[None]:
    """Hold the registry's retrain lock (one retrain at a time per registry)."""
    registry.root.mkdir(parents=True, exist_ok=True)
    with (registry.root / ".retrain.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RegistryBusyError(
                f"another retrain holds {registry.root / '.retrain.lock'}; try again later"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# --- progress, command line and schedule ----------------------------------------------------


class Display:
    """Progress on a terminal (the current step, a bar for the epochs); silent elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> Display:
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, text: str, total: int | None = None) -> None:
        """Show the step now running (with a bar when its ``total`` is known)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        count = f"0/{total}" if total else ""
        self._task = self._progress.add_task(text, total=total, count=count)

    def epochs(self, total: int) -> Callable[[], None]:
        """Show a bar of ``total`` epochs; return the callable that advances it."""
        self.step("training the challenger", total)
        progress, task = self._progress, self._task
        if progress is None:
            return lambda: None

        done = [0]

        def advance() -> None:
            done[0] += 1
            progress.update(task, completed=done[0], count=f"{done[0]}/{total}")

        return advance


def parse_time(text: str | None) -> float | None:
    """ISO 8601 (UTC when no zone is given) to epoch seconds.

    Raises:
        ConfigError: Not a time.
    """
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {text!r} (e.g. 2026-01-06T12:00:00Z)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def retrain_command(args: argparse.Namespace, settings: Settings) -> int:
    """``netfraud retrain``: returns 0 (promoted), 3 (kept) or raises (exit 1)."""
    request = Request(
        topic=args.from_topic,
        since=parse_time(args.since),
        until=parse_time(args.until),
        seed=args.seed,
    )
    try:
        with Display(enabled=sys.stderr.isatty()) as display:
            decision = retrain(settings, request, display)
    except NetfraudError as exc:
        log.error("retrain_failed", error=str(exc))
        raise
    verb = "promoted" if decision.promoted else "kept the champion instead of"
    print(f"retrain: {verb} {decision.challenger}: " + "; ".join(decision.verdict.reasons))
    print(f"retrain: in service {decision.in_service}; decision recorded in {decision.record}")
    return decision.exit_code


def start_schedule(settings: Settings, stop: threading.Event) -> threading.Thread:
    """Retrain every ``[retrain] every`` seconds in a background thread until ``stop``.

    Scoring is not blocked: the loop picks a promotion up by hot reload.
    """
    every = settings.retrain.every
    if not every:
        raise ConfigError("retrain.every is not set (serve --retrain-every 6h)")
    if settings.archive.path is None:
        raise ConfigError(
            "retrain.every needs the archive to train from: set [archive] path "
            "(NETFRAUD_ARCHIVE__PATH, serve --archive-dir)"
        )

    def run() -> None:
        while not stop.wait(every):
            retrain_once(settings)

    thread = threading.Thread(target=run, name="retrain-schedule", daemon=True)
    thread.start()
    log.info("retrain_scheduled", every_s=every)
    return thread


def retrain_once(settings: Settings) -> Decision | None:
    """One scheduled retrain; a failure is logged and the schedule goes on."""
    try:
        return retrain(settings)
    except RegistryBusyError as exc:
        log.info("retrain_skipped", reason=str(exc))
    except (NetfraudError, OSError, ValueError) as exc:
        log.error("retrain_failed", error=str(exc), error_type=type(exc).__name__)
    except Exception as exc:  # a bug must not end the schedule silently
        log.exception("retrain_failed", error=str(exc), error_type=type(exc).__name__)
    return None
