"""Reading one whole topic without a consumer group.

The analyst tools and the suppression follower read a topic on their own:
every partition assigned by hand, nothing committed, the start chosen by the
caller (the beginning, the end, or a point in time).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, Literal

import kafka.errors
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from detector.errors import TransportError
from detector.settings import Settings
from detector.stream.kafka_python import connection_config

#: Where to start: the first record, after the last one, or a time (epoch seconds).
Start = Literal["beginning", "end"] | float


class TopicReader:
    """Every partition of one topic, read by a consumer outside any group.

    Args:
        settings: Connection settings.
        topic: The topic to read.
        start: ``"beginning"``, ``"end"``, or epoch seconds: the first record
            published at or after that time.

    Raises:
        TransportError: No broker answered.
    """

    def __init__(self, settings: Settings, topic: str, start: Start = "beginning") -> None:
        self.topic = topic
        self.start = start
        self.bootstrap = settings.kafka.bootstrap_servers
        try:
            self.consumer = KafkaConsumer(
                **connection_config(settings), group_id=None, enable_auto_commit=False
            )
        except kafka.errors.KafkaError as exc:  # no broker: a timeout in kafka-python 3
            raise TransportError(
                f"no Kafka broker answered at {self.bootstrap}: {exc}; "
                "check kafka.bootstrap_servers and that the broker is up"
            ) from exc
        self.partitions: list[TopicPartition] = []

    def assign(self) -> bool:
        """Assign the topic's partitions and seek to the start.

        Returns:
            Whether the topic exists (a missing topic has nothing to read yet).
        """
        ids = self.consumer.partitions_for_topic(self.topic)
        if not ids:
            return False
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(ids)]
        self.consumer.assign(self.partitions)
        self._seek()
        return True

    def end_offsets(self) -> dict[TopicPartition, int]:
        """The offset after the last record of each assigned partition."""
        if not self.partitions:
            return {}
        ends: dict[TopicPartition, int] = self.consumer.end_offsets(self.partitions)
        return ends

    def reached(self, ends: dict[TopicPartition, int]) -> bool:
        """Whether every partition's position is at or past ``ends``."""
        return all(self.consumer.position(tp) >= end for tp, end in ends.items())

    def poll(self, timeout_ms: int = 500) -> list[Any]:
        """The next records of any partition, oldest first within each."""
        chunk = self.consumer.poll(timeout_ms=timeout_ms)
        return [record for records in chunk.values() for record in records]

    def close(self) -> None:
        """Leave the broker."""
        self.consumer.close(autocommit=False)

    def _seek(self) -> None:
        if self.start == "beginning":
            self.consumer.seek_to_beginning(*self.partitions)
        elif self.start == "end":
            self.consumer.seek_to_end(*self.partitions)
        else:
            self._seek_to_time(float(self.start))

    def _seek_to_time(self, epoch_s: float) -> None:
        wanted = {tp: int(epoch_s * 1000) for tp in self.partitions}
        found = self.consumer.offsets_for_times(wanted)
        ends = self.consumer.end_offsets(self.partitions)
        for tp in self.partitions:
            hit = found.get(tp)
            # No record at or after that time: start at the end.
            self.consumer.seek(tp, hit.offset if hit is not None else ends[tp])


def read_to_end(
    settings: Settings, topic: str, idle_timeout_s: float = 30.0
) -> Generator[Any, None, None]:
    """Every record of ``topic`` present now, from the beginning.

    Args:
        settings: Connection settings.
        topic: The topic to read; a missing topic yields nothing.
        idle_timeout_s: Give up when no record has arrived for this long
            although the end is not reached yet.

    Raises:
        TransportError: The end was not reached within ``idle_timeout_s``.
    """
    reader = TopicReader(settings, topic, "beginning")
    try:
        if not reader.assign():
            return
        ends = reader.end_offsets()
        last = time.monotonic()
        while not reader.reached(ends):
            records = reader.poll()
            if records:
                last = time.monotonic()
            elif time.monotonic() - last > idle_timeout_s:
                raise TransportError(
                    f"reading {topic} stalled for {idle_timeout_s:.0f} s before its end; "
                    f"check the broker at {reader.bootstrap}"
                )
            yield from records
    finally:
        reader.close()


def fetch_one(
    settings: Settings, topic: str, partition: int, offset: int, timeout_s: float = 15.0
) -> Any | None:
    """The record at one offset, or ``None`` if retention or compaction removed it.

    Raises:
        TransportError: No broker answered, or the record did not arrive in time.
    """
    reader = TopicReader(settings, topic, "beginning")
    tp = TopicPartition(topic, partition)
    try:
        reader.consumer.assign([tp])
        first = reader.consumer.beginning_offsets([tp])[tp]
        last = reader.consumer.end_offsets([tp])[tp]
        if not first <= offset < last:
            return None
        reader.consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in reader.poll():
                # A compacted topic may have dropped the offset: the next one comes instead.
                return record if record.offset == offset else None
        raise TransportError(
            f"{topic}[{partition}] offset {offset} did not arrive within {timeout_s:.0f} s"
        )
    finally:
        reader.close()
