"""The default transport, on kafka-python."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import kafka
import kafka.errors
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from detector.errors import (
    AccessDeniedError,
    AuthenticationError,
    DeliveryError,
    FencedError,
    TransportError,
)
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.delivery import transactional_id
from detector.stream.transport import Headers, Message, TopicPartition, without_revoked

log = get_logger("transport")

#: How long an empty poll waits for a first record, in milliseconds.
IDLE_POLL_MS = 500
#: ``consumer.assignment_strategy`` -> kafka-python's assignor.
ASSIGNORS: dict[str, Any] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
    "cooperative-sticky": CooperativeStickyAssignor,
}
#: Errors after which a transactional producer can do nothing more.
FENCED = (
    kafka.errors.ProducerFencedError,
    kafka.errors.InvalidProducerEpochError,
    kafka.errors.TransactionalIdAuthorizationFailedError,
)


def connection_config(settings: Settings) -> dict[str, Any]:
    """kafka-python options shared by consumers, producers and admin clients."""
    k = settings.kafka
    config: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers.split(","),
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
    }
    if k.security_protocol.startswith("SASL"):
        config.update(
            sasl_mechanism=k.sasl_mechanism or "SCRAM-SHA-512",
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=k.password(),
        )
    if k.security_protocol.endswith("SSL"):
        config.update(
            ssl_cafile=_str(k.ssl_cafile),
            ssl_certfile=_str(k.ssl_certfile),
            ssl_keyfile=_str(k.ssl_keyfile),
            ssl_password=k.ssl_password.get_secret_value() if k.ssl_password else None,
            ssl_check_hostname=k.ssl_check_hostname,
        )
    return config


def _str(value: object) -> str | None:
    return None if value is None else str(value)


class KafkaPythonTransport:
    """Consumer in a group plus an idempotent producer, on kafka-python."""

    def __init__(self, settings: Settings, topics: Sequence[str]) -> None:
        c, p = settings.consumer, settings.producer
        base = connection_config(settings)
        self._assigned: list[TopicPartition] = []
        self._warmup_records = settings.context.warmup_records
        self._reset_earliest = c.auto_offset_reset == "earliest"
        self._warm_until: dict[TopicPartition, int] = {}
        self._to_warm: list[KafkaTopicPartition] = []
        self._just_revoked: set[TopicPartition] = set()
        # Partitions revoked while a batch is being gathered.
        self._revoked_in_poll: set[TopicPartition] = set()
        self._to_resume: list[KafkaTopicPartition] = []
        # Per partition, the offset after the last batch handed to commit().
        self._done: dict[TopicPartition, int] = {}
        self._paused = False
        self._unreachable_since: float | None = None
        # Exactly-once: a transactional producer, and input read as committed.
        eos = settings.delivery.mode == "exactly-once"
        self._bootstrap = settings.kafka.bootstrap_servers
        self.transactional_id = transactional_id(settings) if eos else None
        causes = _Causes.attach()
        try:
            self.consumer = KafkaConsumer(
                **base,
                group_id=c.group_id,
                group_instance_id=c.group_instance_id,
                partition_assignment_strategy=(ASSIGNORS[c.assignment_strategy],),
                isolation_level="read_committed" if eos else "read_uncommitted",
                enable_auto_commit=False,
                auto_offset_reset=c.auto_offset_reset,
                session_timeout_ms=c.session_timeout_ms,
                heartbeat_interval_ms=c.heartbeat_interval_ms,
                max_poll_interval_ms=c.max_poll_interval_ms,
                max_poll_records=c.max_batch_records,
                fetch_max_bytes=c.fetch_max_bytes,
                max_partition_fetch_bytes=c.max_partition_fetch_bytes,
            )
            self._producer_config = dict(
                base,
                acks="all" if eos or p.acks == "all" else 1,
                linger_ms=p.linger_ms,
                batch_size=p.batch_size,
                compression_type=None if p.compression_type == "none" else p.compression_type,
                retries=2**31 - 1,
                enable_idempotence=eos or p.acks == "all",
                transactional_id=self.transactional_id,
            )
            self.producer = self._new_producer()
        except (kafka.errors.KafkaError, OSError) as exc:
            raise _classify(exc, settings, causes.messages) from exc
        finally:
            causes.detach()
        self.consumer.subscribe(list(topics), listener=_Listener(self))
        self._pending: list[Any] = []
        self._failed: list[BaseException] = []

    def poll(self, max_records: int, max_wait_ms: int) -> list[Message]:
        out: list[Message] = []
        deadline: float | None = None
        timeout = IDLE_POLL_MS
        self._revoked_in_poll.clear()
        while len(out) < max_records:
            try:
                chunk = self.consumer.poll(timeout_ms=timeout, max_records=max_records - len(out))
            except kafka.errors.AuthorizationError as exc:
                raise _denied(exc, "read the input topics and join the group") from exc
            if self._revoked_in_poll:
                out = without_revoked(out, self._revoked_in_poll)
                self._revoked_in_poll.clear()
            rewound = self._rewind_for_warmup() | self._resume_kept()
            for tp, records in chunk.items():
                if tp not in rewound:
                    out += map(_message, records)
            if not out:
                self._note_link()
                return out
            now = time.monotonic()
            if deadline is None:
                deadline = now + max_wait_ms / 1000
            if now >= deadline or not chunk:
                break
            timeout = max(int((deadline - now) * 1000), 0)
        return out

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        try:
            future = self.producer.send(topic, value=value, key=key, headers=headers or [])
        except kafka.errors.KafkaError as exc:  # buffer full for max_block_ms, or too large
            raise DeliveryError(f"cannot queue a message for {topic}: {exc}") from exc
        future.add_errback(self._failed.append)
        self._pending.append(future)

    def _new_producer(self) -> KafkaProducer:
        producer = KafkaProducer(**self._producer_config)
        if self.transactional_id:
            producer.init_transactions()
            log.info("transactions_ready", transactional_id=self.transactional_id)
        return producer

    def _renew_producer(self, cause: BaseException) -> None:
        """Replace the producer after a refusal that is not worth retrying:
        kafka-python's idempotent producer can stay stuck on such an error for a
        partition even once the broker would accept the messages."""
        log.warning("producer_renewed", cause=repr(cause))
        try:
            self.producer.close(timeout=0)
        except kafka.errors.KafkaError as exc:
            log.warning("producer_close_failed", error=repr(exc))
        self.producer = self._new_producer()

    def in_flight(self) -> int:
        """Messages produced and neither acknowledged nor failed yet."""
        return sum(1 for f in self._pending if not f.is_done)

    def connected(self) -> bool:
        """Whether the producer, or else the consumer, holds a live broker connection."""
        clients = (getattr(self.producer, "_sender", None), self.consumer)
        return any(_linked(getattr(c, "_client", None)) for c in clients)

    def _note_link(self) -> None:
        """Log once when every broker connection is gone, and once when one is back."""
        if self.connected() == (self._unreachable_since is None):
            return
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning("broker_unreachable", bootstrap=self._bootstrap)
        else:
            down = time.monotonic() - self._unreachable_since
            self._unreachable_since = None
            log.info("broker_reachable", bootstrap=self._bootstrap, down_s=round(down, 1))

    def begin_transaction(self) -> None:
        """Start a transaction (exactly-once)."""
        try:
            self.producer.begin_transaction()
        except kafka.errors.KafkaError as exc:
            raise self._transaction_error("begin", exc) from exc

    def commit_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        """Wait for the batch's messages, add its offsets, commit (exactly-once)."""
        self.flush(timeout_s)
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(
                    _offsets(offsets), self.consumer.group_metadata()
                )
            self.producer.commit_transaction()
            self._done.update(offsets)
            self._advance(offsets)
        except kafka.errors.KafkaError as exc:
            raise self._transaction_error("commit", exc) from exc

    def abort_transaction(self) -> None:
        """Discard the open transaction (exactly-once)."""
        self._pending, self._failed = [], []
        try:
            self.producer.abort_transaction()
        except kafka.errors.KafkaError as exc:
            raise self._transaction_error("abort", exc) from exc

    def _transaction_error(self, step: str, exc: Exception) -> TransportError:
        manager = getattr(self.producer, "_transaction_manager", None)
        if isinstance(exc, FENCED) or (manager is not None and manager.has_fatal_error()):
            return FencedError(
                f"transaction {step} failed for transactional id {self.transactional_id!r}: "
                f"{exc!r}; another instance uses this id, or it is not authorised"
            )
        return DeliveryError(f"transaction {step} failed: {exc!r}")

    def flush(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except kafka.errors.KafkaTimeoutError as exc:
            raise DeliveryError(f"broker did not acknowledge within {timeout_s} s: {exc}") from exc
        except kafka.errors.KafkaError as exc:  # kafka-python's own hiccups, e.g. on a split batch
            raise DeliveryError(f"flush failed: {exc!r}") from exc
        failed = self._failed or [f.exception for f in self._pending if f.failed()]
        unfinished = [f for f in self._pending if not f.is_done]
        self._pending, self._failed = [], []
        if failed and isinstance(failed[0], kafka.errors.AuthorizationError):
            raise _denied(failed[0], "write the alerts and dead-letter topics")
        if failed and not all(getattr(f, "retriable", False) for f in failed):
            self._renew_producer(failed[0])
        if failed:
            raise DeliveryError(f"{len(failed)} messages not acknowledged: {failed[0]!r}")
        if unfinished:
            raise DeliveryError(f"{len(unfinished)} messages still unacknowledged after flush")

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._done.update(offsets)  # delivered, even if the commit below is refused
        self._advance(offsets)
        self.consumer.commit(_offsets(offsets))

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        owned = set(self.assignment())
        for (topic, partition), offset in offsets.items():
            if (topic, partition) in owned:
                self.consumer.seek(KafkaTopicPartition(topic, partition), offset)

    def assignment(self) -> Sequence[TopicPartition]:
        return list(self._assigned)

    def warm_until(self) -> dict[TopicPartition, int]:
        return dict(self._warm_until)

    def _advance(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Make sure a delivered batch is not read again: a rebalance while it
        was being delivered resets kept partitions to their last commit."""
        owned = set(self.consumer.assignment())
        for (topic, partition), offset in offsets.items():
            tp = KafkaTopicPartition(topic, partition)
            if tp in owned and self.consumer.position(tp) < offset:
                self.consumer.seek(tp, offset)

    def _resume_kept(self) -> set[KafkaTopicPartition]:
        """Move partitions that a rebalance handed straight back to where this
        consumer's delivery had got to, and commit that if it is ahead.

        kafka-python keeps a partition's fetch position when an eager
        rebalance hands it back, and that position may be past records that
        were fetched but never delivered (dropped because the partition was
        revoked before the batch was published): they must be read again.
        A commit refused during the rebalance leaves the committed offset
        behind a batch already delivered; reading from it would publish that
        batch again and fold it into the context a second time. So the
        partition resumes from the later of the last delivered and the last
        committed offset. Returns the partitions it moved.
        """
        pending, self._to_resume = self._to_resume, []
        owned = set(self.consumer.assignment())
        moved, ahead = set(), {}
        for tp in pending:
            if tp not in owned:
                continue
            committed = self.consumer.committed(tp)
            last = -1 if committed is None else committed
            done = self._done.get((tp.topic, tp.partition), -1)
            resume = max(done, last)
            if resume < 0 and self._reset_earliest:  # nothing delivered or committed yet
                resume = self.consumer.beginning_offsets([tp]).get(tp, -1)
            if done > last:  # delivered, but the commit was refused
                ahead[tp] = OffsetAndMetadata(done, "", -1)
            if resume >= 0 and resume != self.consumer.position(tp):
                self.consumer.seek(tp, resume)
                moved.add(tp)
        if moved:
            log.info("resumed_after_rebalance", partitions=len(moved))
        if ahead:
            try:
                self.consumer.commit(ahead)
            except kafka.errors.KafkaError as exc:  # the next batch commits it
                log.warning("commit_failed", error=str(exc))
        return moved

    def _rewind_for_warmup(self) -> set[KafkaTopicPartition]:
        """Start newly assigned partitions a little before their committed
        offsets, so that context state is rebuilt from records already scored.

        Runs on the polling thread, after the assignment callback (which must
        not block). Returns the partitions it moved back.
        """
        pending, self._to_warm = self._to_warm, []
        owned = set(self.consumer.assignment())
        pending = [tp for tp in pending if tp in owned]
        if not self._warmup_records or not pending:
            return set()
        beginning = self.consumer.beginning_offsets(pending)
        rewound = set()
        for tp in pending:
            committed = self.consumer.committed(tp)
            if not committed:
                continue
            start = max(committed - self._warmup_records, beginning.get(tp, 0))
            if start < committed:
                self.consumer.seek(tp, start)
                self._warm_until[(tp.topic, tp.partition)] = committed
                rewound.add(tp)
        if rewound:
            log.info(
                "context_warmup",
                partitions=len(rewound),
                records=sum(self._warm_until[(t.topic, t.partition)] for t in rewound),
            )
        return rewound

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(high - self.consumer.position(tp), 0)
        return out

    def pause(self) -> None:
        self._paused = True
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self.consumer.resume(*self.consumer.paused())

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except kafka.errors.KafkaError as exc:  # unsent messages are read again after a restart
            log.warning("producer_close_failed", error=repr(exc))
        finally:
            self.consumer.close(autocommit=False)


class _Listener(kafka.ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, transport: KafkaPythonTransport) -> None:
        self.transport = transport

    def on_partitions_revoked(self, revoked: Any) -> None:
        gone = sorted((tp.topic, tp.partition) for tp in revoked)
        self.transport._assigned = [tp for tp in self.transport._assigned if tp not in gone]
        # An eager rebalance revokes everything and hands most of it straight
        # back: the context of those partitions is intact and must not be fed
        # their recent records a second time by a warm-up.
        self.transport._just_revoked = {tp for tp in gone if tp not in self.transport._warm_until}
        self.transport._revoked_in_poll.update(gone)
        for tp in gone:
            self.transport._warm_until.pop(tp, None)
        if gone:
            log.info("partitions_revoked", partitions=[f"{t}[{p}]" for t, p in gone])

    def on_partitions_assigned(self, assigned: Any) -> None:
        new = sorted((tp.topic, tp.partition) for tp in assigned)
        self.transport._assigned = sorted(set(self.transport._assigned) | set(new))
        kept = self.transport._just_revoked
        self.transport._just_revoked = set()
        self.transport._to_warm.extend(
            tp for tp in assigned if (tp.topic, tp.partition) not in kept
        )
        self.transport._to_resume.extend(tp for tp in assigned if (tp.topic, tp.partition) in kept)
        if self.transport._paused:  # a partition that arrives during a pause waits too
            self.transport.consumer.pause(*assigned)
        log.info(
            "partitions_assigned",
            partitions=[f"{t}[{p}]" for t, p in new],
            context_kept=len(kept.intersection(new)),
        )


def _offsets(offsets: Mapping[TopicPartition, int]) -> dict[KafkaTopicPartition, Any]:
    return {
        KafkaTopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()
    }


def _linked(client: Any) -> bool:
    """Whether a kafka-python network client has a live connection to a broker."""
    try:
        return any(client.connected(b.nodeId) for b in client.cluster.brokers())
    except AttributeError:  # another kafka-python layout: do not fail readiness on it
        return True


def _message(record: Any) -> Message:
    return Message(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.timestamp,
        record.headers or [],  # kafka-python's own list of (key, value) pairs
    )


def _denied(exc: BaseException, what: str) -> AccessDeniedError:
    return AccessDeniedError(
        f"the broker's ACLs do not let netfraud {what}: {exc}; grant the ACLs listed in "
        "docs/operating.md (Security and ACLs) to its principal"
    )


class _Causes(logging.Handler):
    """Keeps kafka-python's last error log lines while the clients connect: a
    refused password or certificate shows only there, while the exception
    raised just says that bootstrapping timed out."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: deque[str] = deque(maxlen=20)

    @classmethod
    def attach(cls) -> _Causes:
        handler = cls()
        logging.getLogger("kafka").addHandler(handler)
        return handler

    def detach(self) -> None:
        logging.getLogger("kafka").removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_AUTH_WORDS = ("auth", "sasl", "ssl", "certificate", "handshake", "credential")
_TELLING_WORDS = ("authentication", "certificate", "handshake", "credential")
#: The names differ between kafka-python 2 and 3.
_AUTH_ERRORS = tuple(
    getattr(kafka.errors, name)
    for name in ("AuthenticationFailedError", "SaslAuthenticationFailedError")
    if hasattr(kafka.errors, name)
)


def _classify(exc: BaseException, settings: Settings, causes: Sequence[str] = ()) -> TransportError:
    text, where = str(exc), settings.kafka.bootstrap_servers
    auth = [c for c in causes if any(w in c.lower() for w in _AUTH_WORDS)]
    telling = [c for c in auth if any(w in c.lower() for w in _TELLING_WORDS)] or auth
    if isinstance(exc, _AUTH_ERRORS) or auth:
        reason = re.sub(r"^(<[^>]*>: )?(Connection lost: |Abort \()?", "", telling[-1])[:300]
        reason = reason if auth else text
        return AuthenticationError(
            f"the broker at {where} refused the connection "
            f"({settings.kafka.security_protocol}): {reason}; check kafka.sasl_* / kafka.ssl_*"
        )
    if "bootstrap" in text.lower() or type(exc).__name__ == "NoBrokersAvailable":
        return TransportError(
            f"no Kafka broker answered at {where}: {text}; "
            "check kafka.bootstrap_servers and that the broker is up"
        )
    if any(w in text.lower() for w in _AUTH_WORDS):
        return AuthenticationError(
            f"the broker at {where} refused the connection "
            f"({settings.kafka.security_protocol}): {text}; check kafka.sasl_* / kafka.ssl_*"
        )
    return TransportError(f"cannot use Kafka at {where}: {text}")
