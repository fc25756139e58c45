"""Poison input: 100,000 fuzzed records among good ones never stop the loop."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fuzz import Sample, poison_stream
from harness import Server, create_topics, read_messages, summaries, unique

from detector.stream import deadletters

pytestmark = pytest.mark.integration
BAD, GOOD = 100_000, 30_000


def produce_tracked(bootstrap: str, topic: str, samples: list[Sample]) -> list[tuple[int, int]]:
    """Send the samples in order; return the (partition, offset) each landed at."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "message.max.bytes": 2_000_000,
            "log_level": 3,
        }
    )
    where: list[tuple[int, int]] = [(-1, -1)] * len(samples)

    def report(i: int) -> Any:
        def done(error: Any, message: Any) -> None:
            assert error is None, error
            where[i] = (message.partition(), message.offset())

        return done

    for i, sample in enumerate(samples):
        while True:
            try:
                producer.produce(topic, sample.value, sample.key, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0
    return where


def _origin(message: Any) -> tuple[int, int]:
    headers = dict(message.headers)
    return int(headers[deadletters.ORIGIN_PARTITION]), int(headers[deadletters.ORIGIN_OFFSET])


def test_poison_records_are_dead_lettered_and_the_good_ones_scored(
    kafka_broker: Any, model_registry: Path, tmp_path: Path
) -> None:
    """Each fuzzed record lands in the dead-letter topic with a reason; every
    good one is scored; serve keeps running to a clean stop."""
    samples = poison_stream(BAD, GOOD)
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = unique("poison"), unique("poison-alerts"), unique("poison-dlq")
    create_topics(bootstrap, {topic: 3, alerts: 1, dead: 1})
    where = produce_tracked(bootstrap, topic, samples)
    server = Server(
        bootstrap, topic, model_registry, unique("poison"), alerts, dead, tmp_path / "s"
    )
    server.args = ["--stop-after-idle", "5"]

    code = server.start().wait()

    summary = summaries(server.text())[-1]
    letters = read_messages(bootstrap, dead)
    bad_at = {w: s for w, s in zip(where, samples, strict=True) if s.bad}
    reasons = [dict(m.headers).get(deadletters.REASON, b"") for m in letters]
    truncated = [m for m in letters if deadletters.TRUNCATED in dict(m.headers)]
    print(
        f"\n[poison] records_in={len(samples)} good={GOOD} bad={BAD} "
        f"scored={summary['scored']} dead_letters={summary['dead_letters']} "
        f"letters_in_topic={len(letters)} truncated_letters={len(truncated)} "
        f"largest_letter_bytes={max(len(m.value) for m in letters)} exit_code={code}"
    )
    print(f"[poison] bad by kind: {dict(Counter(s.kind for s in bad_at.values()))}")
    assert code == 0, server.tail()
    assert summary["scored"] == GOOD
    assert summary["dead_letters"] == BAD == len(letters)
    assert {_origin(m) for m in letters} == set(bad_at)
    assert all(reasons), "every dead letter says why"
    assert len(truncated) == sum(s.kind == "near_limit" for s in bad_at.values())
