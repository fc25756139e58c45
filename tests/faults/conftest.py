"""Fixtures of the fault-injection tests: a replayed stream and private brokers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Server,
    Stream,
    alert_keys,
    create_topics,
    encode_rows,
    produce_fast,
    read_messages,
    stream_rows,
    unique,
)
from kafka_fixtures import START_TIMEOUT_S, localkafka


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/faults carries the ``faults`` marker; the
    strategy comparisons (marker ``compare``) run only with FAULTS_COMPARE=1."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
    if os.environ.get("FAULTS_COMPARE") == "1":
        return
    dropped = [item for item in items if item.get_closest_marker("compare")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("compare")]


@pytest.fixture(scope="session")
def replayed_stream(
    kafka_broker: Any, model_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Stream:
    """≥100,000 labelled records on a 3-partition topic, and the alerts of a
    clean serve run over them (by input partition and offset)."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = unique("faults-flows"), unique("faults-clean"), unique("faults-dlq")
    create_topics(bootstrap, {topic: 3, alerts: 1, dead: 1})
    records = produce_fast(bootstrap, topic, encode_rows(stream_rows()))
    log = tmp_path_factory.mktemp("clean") / "serve.log"
    began = time.monotonic()
    server = Server(bootstrap, topic, model_registry, unique("clean"), alerts, dead, log)
    server.args = ["--stop-after-idle", "6"]
    assert server.start().wait() == 0, server.tail()
    keys = alert_keys(read_messages(bootstrap, alerts))
    assert len(keys) == len(set(keys)) > 1_000, "the clean run must alert, each record once"
    return Stream(bootstrap, topic, 3, records, frozenset(keys), round(time.monotonic() - began, 1))


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Returns ``start(extra_properties=None, format_args=(), port=None)``: a broker
    of this test alone (to stop, pause or secure), stopped at the end."""
    brokers: list[Any] = []

    def start(
        extra_properties: dict[str, str] | None = None,
        format_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> Any:
        broker = localkafka.LocalKafka(
            port or localkafka.free_port(),
            tmp_path / f"kafka-{len(brokers)}",
            extra_properties=extra_properties or {},
            format_args=list(format_args),
        )
        brokers.append(broker)
        broker.start(timeout=START_TIMEOUT_S)
        return broker

    try:
        yield start
    finally:
        for broker in brokers:
            broker.stop()
