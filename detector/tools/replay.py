"""Publish a file of records to a topic, as fast as possible or at a rate."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from detector.settings import Settings
from detector.stream.kafka_python import connection_config
from detector.tools.progress import progress_bar

_decode_object = msgspec.json.Decoder(dict[str, object]).decode


def ensure_topic(settings: Settings, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists."""
    admin = KafkaAdminClient(**connection_config(settings))
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}})
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def json_lines(
    path: Path, key_field: str | None = "src_ip"
) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) per non-empty line; the key is ``key_field`` when present."""
    with path.open("rb") as handle:
        for line in handle:
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            yield _key(value, key_field), value


def _key(value: bytes, field: str | None) -> bytes | None:
    if field is None:
        return None
    try:
        found = _decode_object(value).get(field)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # a malformed line still travels, unkeyed
    return str(found).encode() if found is not None else None


def publish(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    total: int | None = None,
    rate: float | None = None,
) -> int:
    """Send records to ``topic``; return how many were acknowledged.

    Args:
        settings: Connection settings.
        topic: Destination topic.
        records: (key, value) pairs.
        total: Number of records, for the progress bar.
        rate: Records per second; as fast as possible when ``None``.
    """
    producer = KafkaProducer(
        **connection_config(settings),
        acks="all",
        linger_ms=20,
        batch_size=1 << 20,
        enable_idempotence=True,
    )
    sent, started = 0, time.monotonic()
    with progress_bar(f"replay → {topic}", total) as advance:
        for key, value in records:
            producer.send(topic, value=value, key=key)
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if sent % 1000 == 0:
                advance(1000)
        producer.flush()
        advance(sent % 1000)
    producer.close()
    return sent
