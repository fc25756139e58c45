"""The default transport, on kafka-python."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import kafka
import kafka.errors
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from detector.errors import AuthenticationError, DeliveryError, TransportError
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.transport import Headers, Message, TopicPartition

log = get_logger("transport")

#: How long an empty poll waits for a first record, in milliseconds.
IDLE_POLL_MS = 500


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
        self._warm_until: dict[TopicPartition, int] = {}
        self._to_warm: list[KafkaTopicPartition] = []
        try:
            self.consumer = KafkaConsumer(
                **base,
                group_id=c.group_id,
                group_instance_id=c.group_instance_id,
                enable_auto_commit=False,
                auto_offset_reset=c.auto_offset_reset,
                session_timeout_ms=c.session_timeout_ms,
                heartbeat_interval_ms=c.heartbeat_interval_ms,
                max_poll_interval_ms=c.max_poll_interval_ms,
                max_poll_records=c.max_batch_records,
                fetch_max_bytes=c.fetch_max_bytes,
                max_partition_fetch_bytes=c.max_partition_fetch_bytes,
            )
            self.producer = KafkaProducer(
                **base,
                acks="all" if p.acks == "all" else 1,
                linger_ms=p.linger_ms,
                batch_size=p.batch_size,
                compression_type=None if p.compression_type == "none" else p.compression_type,
                retries=2**31 - 1,
                enable_idempotence=p.acks == "all",
            )
        except kafka.errors.NoBrokersAvailable as exc:
            raise TransportError(
                f"no Kafka broker answered at {settings.kafka.bootstrap_servers}: {exc}; "
                "check kafka.bootstrap_servers and that the broker is up"
            ) from exc
        except (kafka.errors.KafkaError, OSError) as exc:
            raise _classify(exc, settings) from exc
        self.consumer.subscribe(list(topics), listener=_Listener(self))
        self._pending: list[Any] = []
        self._failed: list[BaseException] = []

    def poll(self, max_records: int, max_wait_ms: int) -> list[Message]:
        out: list[Message] = []
        deadline: float | None = None
        timeout = IDLE_POLL_MS
        while len(out) < max_records:
            chunk = self.consumer.poll(timeout_ms=timeout, max_records=max_records - len(out))
            rewound = self._rewind_for_warmup()
            for tp, records in chunk.items():
                if tp not in rewound:
                    out.extend(_message(r) for r in records)
            if not out:
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
        future = self.producer.send(topic, value=value, key=key, headers=headers or [])
        future.add_errback(self._failed.append)
        self._pending.append(future)

    def flush(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except kafka.errors.KafkaTimeoutError as exc:
            raise DeliveryError(f"broker did not acknowledge within {timeout_s} s: {exc}") from exc
        failed = self._failed or [f.exception for f in self._pending if f.failed()]
        unfinished = [f for f in self._pending if not f.is_done]
        self._pending, self._failed = [], []
        if failed:
            raise DeliveryError(f"{len(failed)} messages not acknowledged: {failed[0]!r}")
        if unfinished:
            raise DeliveryError(f"{len(unfinished)} messages still unacknowledged after flush")

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.consumer.commit(
            {
                KafkaTopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in offsets.items()
            }
        )

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        owned = set(self.assignment())
        for (topic, partition), offset in offsets.items():
            if (topic, partition) in owned:
                self.consumer.seek(KafkaTopicPartition(topic, partition), offset)

    def assignment(self) -> Sequence[TopicPartition]:
        return list(self._assigned)

    def warm_until(self) -> dict[TopicPartition, int]:
        return dict(self._warm_until)

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
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self.consumer.resume(*self.consumer.paused())

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        finally:
            self.consumer.close(autocommit=False)


class _Listener(kafka.ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, transport: KafkaPythonTransport) -> None:
        self.transport = transport

    def on_partitions_revoked(self, revoked: Any) -> None:
        gone = sorted((tp.topic, tp.partition) for tp in revoked)
        self.transport._assigned = [tp for tp in self.transport._assigned if tp not in gone]
        for tp in gone:
            self.transport._warm_until.pop(tp, None)
        if gone:
            log.info("partitions_revoked", partitions=[f"{t}[{p}]" for t, p in gone])

    def on_partitions_assigned(self, assigned: Any) -> None:
        new = sorted((tp.topic, tp.partition) for tp in assigned)
        self.transport._assigned = sorted(set(self.transport._assigned) | set(new))
        self.transport._to_warm.extend(assigned)
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in new])


def _message(record: Any) -> Message:
    return Message(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.timestamp,
        [(k, v) for k, v in (record.headers or [])],
    )


def _classify(exc: BaseException, settings: Settings) -> TransportError:
    text = str(exc)
    auth_words = ("auth", "sasl", "ssl", "certificate", "handshake", "credential")
    if isinstance(exc, kafka.errors.AuthenticationFailedError) or any(
        w in text.lower() for w in auth_words
    ):
        return AuthenticationError(
            f"the broker at {settings.kafka.bootstrap_servers} refused the connection "
            f"({settings.kafka.security_protocol}): {text}; check kafka.sasl_* / kafka.ssl_*"
        )
    return TransportError(f"cannot use Kafka at {settings.kafka.bootstrap_servers}: {text}")
