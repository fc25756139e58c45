"""The detector loop: poll, decode, features, score, decide, publish, commit.

Each step is a method of its own with its own timing metric. Offsets are
committed only after every alert and dead letter of the batch has been
acknowledged by the broker, so a crash at any point loses nothing: the batch
is read again (at-least-once); or in the same transaction as its output
(exactly-once). ``detector.stream.delivery`` holds the two strategies.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from detector.errors import TransportError
from detector.logs import get_logger
from detector.model.bundle import Bundle
from detector.model.holder import Active, ModelHolder
from detector.model.scoring import ScoreResult
from detector.ops.memory import MemoryWatchdog
from detector.ops.metrics import Metrics
from detector.settings import Settings
from detector.stream import deadletters
from detector.stream.alerts import Origin, build_alert
from detector.stream.backpressure import Backpressure
from detector.stream.delivery import Delivery, Outgoing, make_delivery
from detector.stream.transport import Message, TopicPartition, Transport
from features.context import FlowContext, warm_up
from features.formats import Decoded, FormatAdapter, get_adapter
from features.packets import PacketVectorizer
from features.records import FLOW_FIELDS, FlowBatch, Reject
from features.spec import FlowVectorizer, Vectorizer, Vectors

log = get_logger("loop")
_encode = msgspec.json.Encoder().encode
#: Seconds before the first retry of a batch that was not delivered, and the most.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


@dataclass
class Alert:
    """An alert ready to publish."""

    key: bytes | None
    document: dict[str, Any]
    timestamp_ms: int


@dataclass
class Policy:
    """Decisions that are data, not branches: what to withhold from alerting.

    Attributes:
        suppress: Called with the alert documents of a batch; returns a mask
            of the ones to withhold (for example analyst suppressions).
    """

    suppress: Callable[[list[dict[str, Any]]], npt.NDArray[np.bool_]] | None = None


@dataclass
class BatchReport:
    """What one micro-batch did."""

    records: int = 0
    scored: int = 0
    alerts: int = 0
    dead_letters: int = 0
    skipped: int = 0
    suppressed: int = 0
    model_version: str = ""
    scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    seconds: dict[str, float] = field(default_factory=dict)


class Detector:
    """Consumes records, scores them and publishes alerts.

    Args:
        settings: Validated settings.
        transport: Kafka behind the transport interface.
        models: The model in service, reloaded on promotion.
        metrics: Where counters and timings go.
        policy: Suppressions and other decisions.
        archive: Called with the rows scored below the threshold (for
            retraining); ``None`` to keep nothing.
        monitor: Called with every scored batch's vectors, scores and bundle
            (drift and alert-rate watch); ``None`` for none.
        delivery: How a batch's output and offsets become durable (default:
            the strategy ``delivery.mode`` names).
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        models: ModelHolder,
        metrics: Metrics | None = None,
        policy: Policy | None = None,
        archive: Callable[[FlowBatch, npt.NDArray[np.float64], str], None] | None = None,
        monitor: Callable[[Vectors, npt.NDArray[np.float64], Bundle], None] | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.models = models
        self.metrics = metrics or Metrics()
        self.policy = policy or Policy()
        self.archive = archive
        self.monitor = monitor
        self.delivery = delivery or make_delivery(settings, transport)
        self.backpressure = Backpressure(transport, self.metrics.paused)
        self.memory = MemoryWatchdog(settings.limits.max_rss_mb)
        self._stop = threading.Event()
        self.adapters: dict[str, FormatAdapter] = {}
        # Loading the adapters imports every format module: do it now, not
        # inside the first batch's latency (and fail on an unknown format now).
        for topic in settings.topics.input:
            self._adapter(topic)
        self.vectorizer = self._vectorizer(models.active, None)
        self.metrics.set_model(models.active.bundle.version)
        self.alive_at = time.monotonic()
        self.last_record_at = time.monotonic()
        self._first_batch_at: float | None = None
        self._last_batch_done_at = 0.0
        # CPU seconds of the whole process (all threads) at the same two moments.
        self._first_batch_cpu = self._last_batch_cpu = 0.0
        self._grand: defaultdict[str, int] = defaultdict(int)
        self._totals: defaultdict[str, float] = defaultdict(float)
        self._summary_at = time.monotonic()
        self._score_window: list[npt.NDArray[np.float64]] = []
        self._stage_seconds: defaultdict[str, float] = defaultdict(float)

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; the batch in hand is finished
        (unless it cannot be delivered: it is then left to be read again)."""
        self._stop = stop
        while not stop.is_set():
            self.alive_at = time.monotonic()
            self._maybe_swap_model()
            self._watch_memory()
            fetch_started = time.perf_counter()
            messages = self.transport.poll(
                self.settings.consumer.max_batch_records, self.settings.consumer.max_batch_wait_ms
            )
            if not messages:
                self._maybe_summarise()
                continue
            if self._first_batch_at is not None:  # not the wait for the very first record
                self._observe_stage("fetch", time.perf_counter() - fetch_started)
            self.last_record_at = time.monotonic()
            self._count_consumed(messages)
            if self._first_batch_at is None:
                self._first_batch_at = self.last_record_at
                self._first_batch_cpu = time.process_time()
            try:
                report = self.process(messages)
            except TransportError as exc:  # stopping while retrying, or not retriable
                if not exc.retriable:
                    raise
                self.transport.rewind(first_offsets(messages))
                continue
            self._account(report)
            self._maybe_summarise()
        self._final_summary()

    def process(self, messages: list[Message]) -> BatchReport:
        """Run one micro-batch through every step, committing at the end.

        Records below a partition's warm-up mark were scored before a restart
        or rebalance; they only feed the context state here.
        """
        active = self.models.active
        report = BatchReport(records=len(messages), model_version=active.bundle.version)
        with self._timed(report, "decode"):
            decoded = self.decode(messages)
        with self._timed(report, "features"):
            vectors = self.vectorizer(decoded.batch)
            live = self._live_rows(messages, decoded)
            if not live.all():
                decoded = Decoded(
                    decoded.batch.take(live), self._live_rejects(messages, decoded), decoded.skipped
                )
                vectors = Vectors(
                    vectors.matrix[live],
                    {k: v[live] for k, v in vectors.raw.items()},
                    vectors.warming[live],
                )
        with self._timed(report, "score"):
            result = active.scorer.score(vectors.matrix)
        with self._timed(report, "decide"):
            alerts, suppressed = self.decide(messages, decoded.batch, vectors, result, active)
        self.publish(messages, alerts, decoded.rejects, report)
        if self.archive is not None:
            below = result.scores < active.bundle.threshold
            self.archive(decoded.batch.take(below), result.scores[below], active.bundle.version)
        if self.monitor is not None:
            self.monitor(vectors, result.scores, active.bundle)
        report.scored = len(decoded.batch)
        report.alerts = len(alerts)
        report.dead_letters = len(decoded.rejects)
        report.skipped = len(decoded.skipped)
        report.suppressed = suppressed
        report.scores = result.scores
        return report

    def _warm(self, messages: list[Message]) -> npt.NDArray[np.bool_] | None:
        """Mask of messages re-read only for context warm-up (None if none are)."""
        marks = self.transport.warm_until()
        if not marks:
            return None
        return np.array([m.offset < marks.get((m.topic, m.partition), -1) for m in messages])

    def _live_rows(self, messages: list[Message], decoded: Decoded) -> npt.NDArray[np.bool_]:
        warm = self._warm(messages)
        if warm is None:
            return np.ones(len(decoded.batch), dtype=bool)
        return ~warm[decoded.batch.position]

    def _live_rejects(self, messages: list[Message], decoded: Decoded) -> list[Reject]:
        warm = self._warm(messages)
        return [r for r in decoded.rejects if warm is None or not warm[r.position]]

    def decode(self, messages: list[Message]) -> Decoded:
        """Decode each topic's messages with its format's adapter."""
        by_topic: defaultdict[str, list[int]] = defaultdict(list)
        for i, m in enumerate(messages):
            by_topic[m.topic].append(i)
        batches, rejects, skipped = [], [], []
        for topic, indexes in by_topic.items():
            values = [messages[i].value or b"" for i in indexes]
            part = self._adapter(topic).decode(values)
            index = np.asarray(indexes, dtype=np.int64)
            part.batch.position = index[part.batch.position]
            batches.append(part.batch)
            rejects += [Reject(indexes[r.position], r.reason) for r in part.rejects]
            skipped += [indexes[s] for s in part.skipped]
        return Decoded(FlowBatch.concat(batches), rejects, skipped)

    def decide(
        self,
        messages: list[Message],
        batch: FlowBatch,
        vectors: Vectors,
        result: ScoreResult,
        active: Active,
    ) -> tuple[list[Alert], int]:
        """Build alerts for the rows at or above the threshold."""
        calibration = active.bundle.calibration
        flagged = np.flatnonzero(result.scores >= calibration.threshold)
        if flagged.size == 0:
            return [], 0
        scores = result.scores[flagged]
        severity, risk = calibration.severity(scores), calibration.risk(scores)
        explained = active.bundle.spec.explain_rows(
            vectors.raw,
            flagged,
            result.reconstructed,
            result.errors,
            self.settings.model.explain_top,
        )
        # The flagged rows' canonical fields, one conversion per column.
        columns = [vectors.raw[name][flagged].tolist() for name in FLOW_FIELDS]
        rows = [
            dict(zip(FLOW_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)
        ]
        positions = batch.position[flagged].tolist()
        warming = vectors.warming[flagged].tolist()
        alerts = []
        for j, (row, reasons) in enumerate(zip(rows, explained, strict=True)):
            message = messages[positions[j]]
            document = build_alert(
                origin=Origin(
                    message.topic, message.partition, message.offset, self._format(message.topic)
                ),
                row=row,
                score=float(scores[j]),
                threshold=calibration.threshold,
                severity=str(severity[j]),
                risk=float(risk[j]),
                reasons=reasons,
                model_version=active.bundle.version,
                warming_up=warming[j],
            )
            key = row["src_ip"].encode() if row.get("src_ip") else message.key
            alerts.append(Alert(key, document, message.timestamp_ms))
        if self.policy.suppress is None:
            return alerts, 0
        withheld = self.policy.suppress([a.document for a in alerts])
        kept = [a for a, w in zip(alerts, withheld, strict=True) if not w]
        return kept, len(alerts) - len(kept)

    def publish(
        self,
        messages: list[Message],
        alerts: list[Alert],
        rejects: list[Reject],
        report: BatchReport | None = None,
    ) -> None:
        """Deliver alerts, dead letters and offsets (timed as ``produce`` and
        ``commit``), retrying until the broker has them, then count them."""
        outgoing = self._outgoing(messages, alerts, rejects)
        self._deliver(outgoing, self._offsets(messages), report or BatchReport())
        acknowledged = time.time()
        for alert in alerts:
            self.metrics.alert_latency.observe(max(acknowledged - alert.timestamp_ms / 1000, 0.0))
        severities = Counter(str(a.document["netfraud"]["severity"]) for a in alerts)
        for severity, count in severities.items():
            self.metrics.alerts.labels(severity=severity).inc(count)
        for reject in rejects:
            message = messages[reject.position]
            kind = deadletters.reason_kind(reject.reason)
            self.metrics.records_invalid.labels(reason=kind).inc()
            log.warning(
                "record_rejected",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                reason=reject.reason,
            )

    def _outgoing(
        self, messages: list[Message], alerts: list[Alert], rejects: list[Reject]
    ) -> list[Outgoing]:
        """The batch's alerts and dead letters as messages to publish."""
        topics = self.settings.topics
        out = []
        for alert in alerts:
            where = alert.document["netfraud"]["provenance"]
            origin = (str(where["topic"]), int(where["partition"]))
            out.append(Outgoing(topics.alerts, _encode(alert.document), alert.key, None, origin))
        for reject in rejects:
            m = messages[reject.position]
            value, headers = deadletters.letter(m, reject.reason)
            out.append(Outgoing(topics.dead_letters, value, m.key, headers, (m.topic, m.partition)))
        return out

    def _offsets(self, messages: list[Message]) -> dict[TopicPartition, int]:
        """The offset after the last message of each partition, to commit.

        A partition still re-reading for warm-up is left out: its committed
        offset is already ahead.
        """
        marks = self.transport.warm_until()
        return {tp: o for tp, o in next_offsets(messages).items() if o > marks.get(tp, -1)}

    def _deliver(
        self, outgoing: list[Outgoing], offsets: dict[TopicPartition, int], report: BatchReport
    ) -> None:
        """Hand the batch to the delivery strategy until it is durable.

        Consumption stays paused while it is not, so that records wait in
        Kafka rather than here.

        Raises:
            TransportError: Not retriable, or ``stop`` was set first.
        """
        backoff, attempt = RETRY_FIRST_S, 0
        while True:
            try:
                committed = self.delivery.publish_and_commit(
                    outgoing, offsets, partial(self._timed, report), attempt
                )
                break
            except TransportError as exc:
                if not exc.retriable or self._stop.is_set():
                    raise
                self._wait_to_retry(exc, backoff, len(outgoing), attempt)
            backoff, attempt = min(backoff * 2, RETRY_MAX_S), attempt + 1
        self.backpressure.release("delivery")
        if not committed:
            self.metrics.commit_failures.inc()

    def _wait_to_retry(self, exc: Exception, backoff: float, messages: int, attempt: int) -> None:
        self.metrics.produce_failures.inc()
        log.warning(
            "batch_not_delivered",
            error=str(exc),
            retry_in_s=backoff,
            messages=messages,
            attempt=attempt + 1,
            delivery=self.delivery.name,
        )
        self.backpressure.hold("delivery")
        self.alive_at = time.monotonic()  # retrying is alive, not stuck
        deadline = time.monotonic() + backoff
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._keep_membership()

    def _keep_membership(self) -> None:
        """Poll while paused: no records come, but the consumer stays in its
        group and takes part in a rebalance (after which the batch in hand is
        published only for the partitions still owned)."""
        stray = self.transport.poll(self.settings.consumer.max_batch_records, 0)
        if stray:  # a transport that does not pause: read these again later
            self.transport.rewind(first_offsets(stray))

    def _watch_memory(self) -> None:
        """Pause fetching while resident memory is over ``limits.max_rss_mb``."""
        if self.memory.over():
            self.backpressure.hold(
                "memory", rss_mb=self.memory.last_mb, limit_mb=self.memory.limit_mb
            )
        else:
            self.backpressure.release("memory")

    def _count_consumed(self, messages: list[Message]) -> None:
        for topic, count in Counter(m.topic for m in messages).items():
            self.metrics.records_consumed.labels(topic=topic).inc(count)

    def _maybe_swap_model(self) -> None:
        fresh = self.models.poll()
        if fresh is not None:
            self.metrics.model_reloads.labels(outcome="swapped").inc()
            self.vectorizer = self._vectorizer(fresh, self.vectorizer.context)
            self.metrics.set_model(fresh.bundle.version)

    def _vectorizer(self, active: Active, context: Any) -> Vectorizer:
        spec, c = active.bundle.spec, self.settings.context
        if spec.record == "packet":
            return PacketVectorizer.reuse(spec, context, c.max_keys, c.idle_timeout_s)
        if not isinstance(context, FlowContext) or context.windows != spec.windows:
            warm_up()  # compile before the first batch, not inside its latency
            context = FlowContext(spec.windows, c.max_keys, c.idle_timeout_s)
        return FlowVectorizer(spec, context)

    def _adapter(self, topic: str) -> FormatAdapter:
        adapter = self.adapters.get(topic)
        if adapter is None:
            adapter = self.adapters[topic] = get_adapter(self._format(topic))
        return adapter

    def _format(self, topic: str) -> str:
        return self.settings.topics.format_of(topic)

    @contextmanager
    def _timed(self, report: BatchReport, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        report.seconds[stage] = elapsed
        self._observe_stage(stage, elapsed)

    def _observe_stage(self, stage: str, elapsed: float) -> None:
        self._stage_seconds[stage] += elapsed
        self.metrics.batch_seconds.labels(stage=stage).observe(elapsed)

    def _account(self, report: BatchReport) -> None:
        m = self.metrics
        m.records_scored.inc(report.scored)
        m.suppressed.inc(report.suppressed)
        if report.scores.size:
            ratios = report.scores / self.models.active.bundle.threshold
            # A histogram has no bulk observe: a bounded sample per batch keeps
            # the shape without a per-record cost.
            for ratio in ratios[:: max(1, ratios.size // 64)]:
                m.score.observe(float(ratio))
            self._score_window.append(ratios)
        self._last_batch_done_at = time.monotonic()
        self._last_batch_cpu = time.process_time()
        for key in ("records", "scored", "alerts", "dead_letters", "skipped", "suppressed"):
            self._totals[key] += getattr(report, key)
            self._grand[key] += getattr(report, key)

    def _final_summary(self) -> None:
        busy = self._last_batch_done_at - (self._first_batch_at or self._last_batch_done_at)
        # Wall-clock bounds of the busy span, so that several workers' spans can
        # be joined, and where the time went (stage -> seconds; fetch is the
        # time spent in poll after the first batch).
        wall = time.time() - time.monotonic()
        log.info(
            "final_summary",
            busy_seconds=round(busy, 3),
            busy_from=round(wall + (self._first_batch_at or self._last_batch_done_at), 3),
            busy_until=round(wall + self._last_batch_done_at, 3),
            busy_cpu_seconds=round(max(self._last_batch_cpu - self._first_batch_cpu, 0.0), 3),
            stage_seconds={k: round(v, 3) for k, v in self._stage_seconds.items()},
            **self._grand,
        )

    def _maybe_summarise(self) -> None:
        now = time.monotonic()
        elapsed = now - self._summary_at
        if elapsed < self.settings.metrics.summary_interval_s:
            return
        lag = self.transport.lag()
        for (topic, partition), behind in lag.items():
            self.metrics.lag.labels(topic=topic, partition=str(partition)).set(behind)
        scores = np.concatenate(self._score_window) if self._score_window else np.zeros(0)
        quantiles = np.quantile(scores, [0.5, 0.99]).round(3).tolist() if scores.size else None
        log.info(
            "summary",
            interval_s=round(elapsed, 1),
            records_per_second=round(self._totals["records"] / elapsed, 1),
            **{k: int(v) for k, v in self._totals.items()},
            score_over_threshold_p50_p99=quantiles,
            lag=sum(lag.values()),
            model_version=self.models.active.bundle.version,
        )
        self._totals.clear()
        self._score_window.clear()
        self._summary_at = now


def next_offsets(messages: list[Message]) -> dict[TopicPartition, int]:
    """For each partition in the batch, the offset after its last message."""
    last: dict[TopicPartition, int] = {}
    for m in messages:
        key = (m.topic, m.partition)
        if m.offset >= last.get(key, -1):
            last[key] = m.offset
    return {key: offset + 1 for key, offset in last.items()}


def first_offsets(messages: list[Message]) -> dict[TopicPartition, int]:
    """For each partition in the batch, the offset of its first message."""
    out: dict[TopicPartition, int] = {}
    for m in messages:
        key = (m.topic, m.partition)
        out[key] = min(out.get(key, m.offset), m.offset)
    return out
