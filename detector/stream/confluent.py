"""The optional transport, on confluent-kafka (librdkafka).

It keeps the guarantees of the default kafka-python transport: offsets are
committed only when the loop asks (synchronously, explicit offsets), alerts
and dead letters go through an idempotent ``acks=all`` producer, and
:meth:`ConfluentTransport.flush` raises :class:`DeliveryError` when any
message was not acknowledged. With ``delivery.mode = "exactly-once"`` the
producer is transactional and input is read as committed, so a batch's
output and its offsets are published in one transaction. After an
assignment, each partition starts a little before its committed offset so
that context state is rebuilt from records that were already scored (see
``context.warmup_records``).

librdkafka fetches in background threads, so a micro-batch is usually
already waiting in its queue when the loop asks for one; that is most of its
advantage over kafka-python, which decodes fetch responses on the loop's
thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import Message as KafkaMessage
from confluent_kafka import TopicPartition as KafkaTopicPartition

from detector.errors import (
    AuthenticationError,
    ConfigError,
    DeliveryError,
    FencedError,
    TransportError,
)
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.delivery import transactional_id
from detector.stream.transport import Headers, Message, TopicPartition

log = get_logger("transport")

#: How long an empty poll waits for a first record, in seconds.
IDLE_POLL_S = 0.5
#: How long a readiness probe waits for the broker, in seconds, and how long
#: its answer is reused.
PROBE_TIMEOUT_S = 2.0
PROBE_REUSE_S = 5.0
#: How long blocking admin-like calls (committed offsets, watermarks) may take.
CALL_TIMEOUT_S = 10.0
#: Per-partition prefetch queue of the consumer, in KiB (librdkafka's default
#: of 64 MiB per partition buys no throughput here and costs memory).
QUEUED_KBYTES = 4_096
#: Wait before fetching again for a partition whose prefetch queue was full,
#: in ms (librdkafka's default of 1,000 held one process near 23,000 records/s
#: however fast the loop ran).
FETCH_QUEUE_BACKOFF_MS = 20
#: Errors reported through the error callback that no retry will fix.
_AUTH_CODES = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def connection_config(settings: Settings) -> dict[str, Any]:
    """librdkafka options shared by the consumer and the producer."""
    k = settings.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "client.id": k.client_id,
        "security.protocol": k.security_protocol,
        "socket.timeout.ms": k.request_timeout_ms,
    }
    if k.security_protocol.startswith("SASL"):
        config.update(
            {
                "sasl.mechanism": k.sasl_mechanism or "SCRAM-SHA-512",
                "sasl.username": k.sasl_username,
                "sasl.password": k.password(),
            }
        )
    if k.security_protocol.endswith("SSL"):
        optional = {
            "ssl.ca.location": k.ssl_cafile,
            "ssl.certificate.location": k.ssl_certfile,
            "ssl.key.location": k.ssl_keyfile,
            "ssl.key.password": k.ssl_password.get_secret_value() if k.ssl_password else None,
        }
        config.update({key: str(v) for key, v in optional.items() if v is not None})
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if k.ssl_check_hostname else "none"
        )
    return {key: v for key, v in config.items() if v is not None}


#: ``consumer.assignment_strategy`` -> librdkafka's name (it has no eager
#: sticky assignor).
ASSIGNORS = {
    "range": "range",
    "roundrobin": "roundrobin",
    "cooperative-sticky": "cooperative-sticky",
}


def consumer_config(settings: Settings) -> dict[str, Any]:
    """Consumer options: manual commits of explicit offsets only.

    Raises:
        ConfigError: An assignment strategy librdkafka does not have.
    """
    c = settings.consumer
    if c.assignment_strategy not in ASSIGNORS:
        raise ConfigError(
            f"consumer.assignment_strategy = {c.assignment_strategy!r} is not available with "
            f"kafka.client = 'confluent'; use one of {', '.join(ASSIGNORS)}"
        )
    config = {
        **connection_config(settings),
        "group.id": c.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": c.auto_offset_reset,
        "session.timeout.ms": c.session_timeout_ms,
        "heartbeat.interval.ms": c.heartbeat_interval_ms,
        "max.poll.interval.ms": c.max_poll_interval_ms,
        "fetch.max.bytes": c.fetch_max_bytes,
        "max.partition.fetch.bytes": c.max_partition_fetch_bytes,
        # librdkafka refuses a fetch size above its receive buffer.
        "receive.message.max.bytes": max(c.fetch_max_bytes + 512, 100_000_000),
        "queued.max.messages.kbytes": QUEUED_KBYTES,
        # With the queue capped, librdkafka would otherwise wait a second
        # before fetching again for a partition whose queue was full.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "partition.assignment.strategy": ASSIGNORS[c.assignment_strategy],
        # Exactly-once: skip what aborted transactions wrote upstream.
        "isolation.level": (
            "read_committed" if settings.delivery.mode == "exactly-once" else "read_uncommitted"
        ),
    }
    if c.group_instance_id:
        config["group.instance.id"] = c.group_instance_id
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """Producer options: idempotent with ``acks=all`` unless told otherwise,
    and transactional for exactly-once delivery."""
    p = settings.producer
    eos = settings.delivery.mode == "exactly-once"
    strong = eos or p.acks == "all"
    config = {
        **connection_config(settings),
        "acks": "all" if strong else 1,
        "enable.idempotence": strong,
        "linger.ms": p.linger_ms,
        "batch.size": p.batch_size,
        "compression.type": p.compression_type,
        "request.timeout.ms": settings.kafka.request_timeout_ms,
    }
    if eos:
        config["transactional.id"] = transactional_id(settings)
    return config


class ConfluentTransport:
    """Consumer in a group plus an idempotent producer, on confluent-kafka.

    Args:
        settings: Validated settings (connection, consumer, producer, context).
        topics: Input topics to subscribe to.

    Raises:
        AuthenticationError: The broker refused the credentials or TLS.
        TransportError: No broker answered at ``kafka.bootstrap_servers``.
    """

    def __init__(self, settings: Settings, topics: Sequence[str]) -> None:
        self._settings = settings
        self._topics = list(topics)
        self._warmup_records = settings.context.warmup_records
        self._assigned: list[TopicPartition] = []
        # Partitions revoked while a batch is being gathered.
        self._revoked_in_poll: set[TopicPartition] = set()
        self._warm_until: dict[TopicPartition, int] = {}
        self._paused = False
        self._cooperative = settings.consumer.assignment_strategy == "cooperative-sticky"
        self._failed: list[KafkaError] = []
        self._fatal: KafkaError | None = None
        self._last_error: KafkaError | None = None
        self._reported: set[int] = set()
        self._probe: tuple[float, bool] = (-PROBE_REUSE_S, False)
        self._probe_lock = threading.Lock()
        eos = settings.delivery.mode == "exactly-once"
        self.transactional_id = transactional_id(settings) if eos else None
        try:
            self.consumer = Consumer(
                {**consumer_config(settings), "error_cb": self._on_error, "logger": _QUIET}
            )
            self.producer = Producer(
                {
                    **producer_config(settings),
                    "error_cb": self._on_error,
                    "on_delivery": self._on_delivery,
                    # Reports for failures only: flush() still waits for every
                    # acknowledgement, without a Python call per message.
                    "delivery.report.only.error": True,
                    "logger": _QUIET,
                }
            )
        except KafkaException as exc:
            raise _classify(exc.args[0] if exc.args else exc, settings) from exc
        self._check_reachable()
        if self.transactional_id:
            self._init_transactions()
        self.consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- consuming ------------------------------------------------------------ #

    def poll(self, max_records: int, max_wait_ms: int) -> list[Message]:
        self._raise_if_fatal()
        self._revoked_in_poll.clear()
        first = self.consumer.poll(IDLE_POLL_S)
        if first is None:
            return []
        deadline = time.monotonic() + max_wait_ms / 1000
        raw = [first]
        while len(raw) < max_records:
            left = deadline - time.monotonic()
            chunk = self.consumer.consume(max_records - len(raw), max(left, 0.0))
            if self._revoked_in_poll:  # a rebalance inside consume(): see without_revoked
                revoked = self._revoked_in_poll
                raw = [m for m in raw if (m.topic(), m.partition()) not in revoked]
                self._revoked_in_poll = set()
            raw += chunk
            if left <= 0 or not chunk:
                break
        return self._messages(raw)

    def _messages(self, raw: list[KafkaMessage]) -> list[Message]:
        out = []
        for m in raw:
            error = m.error()
            if error is not None:
                self._message_error(error)
                continue
            # A message without an error always has a topic, partition and
            # offset, and its headers are (str, bytes) pairs.
            out.append(
                Message(
                    m.topic(),  # type: ignore[arg-type]
                    m.partition(),  # type: ignore[arg-type]
                    m.offset(),  # type: ignore[arg-type]
                    m.key(),
                    m.value(),
                    m.timestamp()[1],
                    m.headers() or [],  # type: ignore[arg-type]
                )
            )
        return out

    def _message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal() or error.code() in _AUTH_CODES:
            self._fatal = error
            self._raise_if_fatal()
        self._report(error)

    # -- producing ------------------------------------------------------------ #

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        deadline = time.monotonic() + self._settings.producer.flush_timeout_s
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)  # type: ignore[arg-type]
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                if time.monotonic() > deadline:
                    raise DeliveryError(
                        "the producer's local queue stayed full; the broker is not keeping up"
                    ) from None
                self.producer.poll(0.05)
            except KafkaException as exc:
                self._failed.append(exc.args[0])
                return

    def flush(self, timeout_s: float) -> None:
        remaining = self.producer.flush(timeout_s)
        failed, self._failed = self._failed, []
        if failed:
            raise DeliveryError(f"{len(failed)} messages not acknowledged: {failed[0]}")
        if remaining:
            raise DeliveryError(
                f"{remaining} messages still unacknowledged after {timeout_s} s; "
                "check the broker and producer.flush_timeout_s"
            )

    def _on_delivery(self, error: KafkaError | None, message: KafkaMessage) -> None:
        if error is not None:
            self._failed.append(error)

    # -- transactions (exactly-once) ------------------------------------------ #

    def _init_transactions(self) -> None:
        """Register the transactional id, fencing an earlier instance with it
        and aborting whatever transaction it left open."""
        try:
            self.producer.init_transactions(CALL_TIMEOUT_S)
        except KafkaException as exc:
            self.consumer.close()
            raise self._transaction_error("init", exc) from exc
        log.info("transactions_ready", transactional_id=self.transactional_id)

    def begin_transaction(self) -> None:
        """Start a transaction; the messages produced next belong to it."""
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise self._transaction_error("begin", exc) from exc

    def commit_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        """Wait for the batch's messages, add its offsets, commit."""
        self.flush(timeout_s)
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(
                    [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    self.consumer.consumer_group_metadata(),
                    timeout_s,
                )
            self.producer.commit_transaction(timeout_s)
        except KafkaException as exc:
            raise self._transaction_error("commit", exc) from exc

    def abort_transaction(self) -> None:
        """Discard the open transaction's messages and offsets."""
        self._failed = []
        try:
            self.producer.abort_transaction(CALL_TIMEOUT_S)
        except KafkaException as exc:
            raise self._transaction_error("abort", exc) from exc

    def _transaction_error(self, step: str, exc: KafkaException) -> TransportError:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.fatal():
            return FencedError(
                f"transaction {step} failed for transactional id {self.transactional_id!r}: "
                f"{error.str()}; another instance uses this id, or it is not authorised"
            )
        text = error.str() if isinstance(error, KafkaError) else str(exc)
        return DeliveryError(f"transaction {step} failed: {text}")

    # -- offsets -------------------------------------------------------------- #

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        wanted = [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            done = self.consumer.commit(offsets=wanted, asynchronous=False)
        except KafkaException as exc:
            raise TransportError(f"offset commit failed: {exc.args[0]}") from exc
        refused = [tp for tp in done or [] if tp.error is not None]
        if refused:
            tp = refused[0]
            raise TransportError(
                f"offset commit refused for {tp.topic}[{tp.partition}]: {tp.error}"
            )

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        owned = set(self._assigned)
        for (topic, partition), offset in offsets.items():
            if (topic, partition) not in owned:
                continue
            try:
                self.consumer.seek(KafkaTopicPartition(topic, partition, offset))
            except KafkaException as exc:
                raise TransportError(
                    f"cannot seek {topic}[{partition}] back to {offset}: {exc.args[0]}; "
                    "the process must restart to read the batch again"
                ) from exc

    def assignment(self) -> Sequence[TopicPartition]:
        return list(self._assigned)

    def warm_until(self) -> dict[TopicPartition, int]:
        return dict(self._warm_until)

    def lag(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException:
            return out
        for tp in positions:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
        return out

    # -- flow control and lifecycle -------------------------------------------- #

    def pause(self) -> None:
        self._paused = True
        self.consumer.pause(self.consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self.consumer.resume(self.consumer.assignment())

    def in_flight(self) -> int:
        """Messages produced and neither acknowledged nor failed yet."""
        return len(self.producer)

    def connected(self) -> bool:
        """Whether the producer reached a broker lately (for ``/readyz``).

        Asks for the metadata of the first input topic, at most every
        :data:`PROBE_REUSE_S` seconds.
        """
        with self._probe_lock:
            at, answer = self._probe
            if time.monotonic() - at < PROBE_REUSE_S:
                return answer
            try:
                self.producer.list_topics(self._topics[0], timeout=PROBE_TIMEOUT_S)
                answer = True
            except KafkaException:
                answer = False
            self._probe = (time.monotonic(), answer)
            return answer

    def close(self) -> None:
        try:
            left = self.producer.flush(10)
            if left:
                log.warning("producer_closed_with_unacknowledged", messages=left)
        finally:
            self.consumer.close()

    # -- callbacks -------------------------------------------------------------- #

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        """Start each new partition a little before its committed offset.

        Runs inside :meth:`poll`; the offsets chosen here are where fetching
        starts, so no record from before the warm-up mark is ever returned
        twice in one batch.
        """
        new = sorted((tp.topic, tp.partition) for tp in partitions)
        self._assigned = sorted(set(self._assigned) | set(new))
        starts = self._warmup_starts(partitions)
        if self._cooperative:
            consumer.incremental_assign(starts)
        else:
            consumer.assign(starts)
        if self._paused:  # a partition that arrives during a pause waits too
            consumer.pause(starts)
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in new])

    def _warmup_starts(self, partitions: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]:
        if not self._warmup_records or not partitions:
            return partitions
        try:
            committed = self.consumer.committed(partitions, timeout=CALL_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("context_warmup_skipped", error=str(exc.args[0]))
            return partitions
        starts, rewound, records = [], 0, 0
        for tp in committed:
            key = (tp.topic, tp.partition)
            if tp.offset < 0:  # nothing committed: auto.offset.reset decides
                starts.append(KafkaTopicPartition(tp.topic, tp.partition, OFFSET_INVALID))
                continue
            low, _ = self.consumer.get_watermark_offsets(tp, timeout=CALL_TIMEOUT_S)
            start = max(tp.offset - self._warmup_records, low)
            if start < tp.offset:
                self._warm_until[key] = tp.offset
                rewound += 1
                records += tp.offset - start
            starts.append(KafkaTopicPartition(tp.topic, tp.partition, start))
        if rewound:
            log.info("context_warmup", partitions=rewound, records=records)
        return starts

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._forget(partitions, "partitions_revoked")
        self._unassign(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._forget(partitions, "partitions_lost")
        self._unassign(consumer, partitions)

    def _unassign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    def _forget(self, partitions: list[KafkaTopicPartition], event: str) -> None:
        gone = sorted((tp.topic, tp.partition) for tp in partitions)
        self._assigned = [tp for tp in self._assigned if tp not in gone]
        self._revoked_in_poll.update(gone)
        for tp in gone:
            self._warm_until.pop(tp, None)
        if gone:
            log.info(event, partitions=[f"{t}[{p}]" for t, p in gone])

    def _on_error(self, error: KafkaError) -> None:
        self._last_error = error
        if error.fatal() or error.code() in _AUTH_CODES:
            self._fatal = error
        self._report(error)

    def _report(self, error: KafkaError) -> None:
        """Log each kind of error once per process; librdkafka retries by itself."""
        if error.code() in self._reported:
            return
        self._reported.add(error.code())
        log.warning("kafka_error", code=error.name(), error=error.str(), fatal=error.fatal())

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise _classify(self._fatal, self._settings)

    def _check_reachable(self) -> None:
        """Fail at start, as kafka-python does, when no broker answers."""
        try:
            self.consumer.list_topics(self._topics[0], timeout=CALL_TIMEOUT_S)
        except KafkaException as exc:
            self.consumer.poll(0)  # serve the error callback: it says why
            cause = self._fatal or self._last_error or exc.args[0]
            self.producer.flush(0)
            self.consumer.close()
            raise _classify(cause, self._settings) from exc
        self._raise_if_fatal()


class _Quiet:
    """Drops librdkafka's own log lines: its errors reach the error callback,
    which logs each kind once, instead of once per reconnect attempt."""

    def log(self, *args: Any) -> None:
        """Accept a log record and keep nothing."""


_QUIET = _Quiet()


def _classify(error: object, settings: Settings) -> TransportError:
    text = error.str() if isinstance(error, KafkaError) else str(error)
    code = error.code() if isinstance(error, KafkaError) else None
    auth_words = ("auth", "sasl", "ssl", "certificate", "handshake", "credential")
    if code in _AUTH_CODES or any(w in text.lower() for w in auth_words):
        return AuthenticationError(
            f"the broker at {settings.kafka.bootstrap_servers} refused the connection "
            f"({settings.kafka.security_protocol}): {text}; check kafka.sasl_* / kafka.ssl_*"
        )
    return TransportError(
        f"cannot use Kafka at {settings.kafka.bootstrap_servers}: {text}; "
        "check kafka.bootstrap_servers and that the broker is up"
    )
