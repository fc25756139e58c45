"""A partition that a rebalance hands straight back resumes where delivery got to.

kafka-python keeps a partition's fetch position when an eager rebalance
revokes it and hands it back to the same member. Records fetched but never
delivered (a batch whose output was dropped because its partitions were
revoked before it was published) lie behind that position; they must be
read again, or their alerts are lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from helpers import produce

from detector.settings import load_settings
from detector.stream.kafka_python import KafkaPythonTransport
from detector.stream.loop import next_offsets
from detector.stream.transport import Message

pytestmark = pytest.mark.integration
RECORDS = 600
DEADLINE_S = 90.0


def _transport(bootstrap: str, topic: str, group: str) -> KafkaPythonTransport:
    settings = load_settings(
        overrides={
            "kafka.bootstrap_servers": bootstrap,
            "topics.input": topic,
            "consumer.group_id": group,
            "consumer.max_batch_records": 20,
            "context.warmup_records": 0,
        },
        environ={},
    )
    return KafkaPythonTransport(settings, [topic])


def _position(transport: KafkaPythonTransport, topic: str, partition: int) -> int:
    from kafka.structs import TopicPartition

    return int(transport.consumer.position(TopicPartition(topic, partition)))


def test_partition_handed_back_rereads_what_was_fetched_but_not_delivered(
    kafka_broker: Any, topic_factory: Any
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory("handback", partitions=2)
    produce(bootstrap, topic, ((f"k{i}".encode(), b"{}") for i in range(RECORDS)))
    group = f"handback-{uuid.uuid4().hex[:8]}"
    a = _transport(bootstrap, topic, group)
    deadline = time.monotonic() + DEADLINE_S
    try:
        # One batch delivered and committed, as the loop does.
        first: list[Message] = []
        while not first and time.monotonic() < deadline:
            first = a.poll(20, 50)
        assert first, "no records within the deadline"
        delivered = next_offsets(first)
        a.commit(delivered)
        # Then read on without delivering: the batch whose output a rebalance
        # would drop, on both partitions.
        while time.monotonic() < deadline and not all(
            _position(a, topic, p) > delivered.get((topic, p), 0) for p in (0, 1)
        ):
            a.poll(20, 50)
        ahead = {p: _position(a, topic, p) for p in (0, 1)}
        assert all(ahead[p] > delivered.get((topic, p), 0) for p in (0, 1)), ahead

        stop = threading.Event()
        other: list[Message] = []

        def second_member() -> None:
            b = _transport(bootstrap, topic, group)
            try:
                while not stop.is_set():
                    batch = b.poll(20, 50)
                    other.extend(batch)
                    if batch:
                        b.commit(next_offsets(batch))
            finally:
                b.close()

        joiner = threading.Thread(target=second_member, daemon=True)
        joiner.start()
        after: list[Message] = []
        owned: list[tuple[str, int]] = []
        try:
            while time.monotonic() < deadline:
                batch = a.poll(20, 50)
                owned = list(a.assignment())
                if len(owned) == 1:
                    after.extend(batch)
                    if any((m.topic, m.partition) == owned[0] for m in after):
                        break
        finally:
            stop.set()
            joiner.join(30)
    finally:
        a.close()

    assert len(owned) == 1, f"the second member never got a partition: {owned}"
    (kept,) = owned
    offsets = sorted(m.offset for m in after if (m.topic, m.partition) == kept)
    resume = delivered.get(kept, 0)
    # Fetching had got to ahead[partition] before the rebalance; delivery only
    # to `resume`: reading must start again from there.
    assert offsets[:1] == [resume], (
        f"{kept}: delivered up to {resume}, fetched up to {ahead[kept[1]]}, "
        f"read after the rebalance from {offsets[:1] or 'nowhere'}"
    )
