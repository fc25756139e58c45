"""Pytest fixtures for tests that need a real Kafka broker.

The broker is the local, Docker-free one from ``deploy/kafka/localkafka.py``:
one single-node KRaft broker per test session, on a free 127.0.0.1 port, with its
data in a pytest tmp dir.

Re-export from a conftest (the hook must be re-exported too, or failing tests
will not show the broker log)::

    from kafka_fixtures import (  # noqa: F401
        kafka_broker,
        pytest_runtest_makereport,
        topic_factory,
    )

Without java (or without mvn while the jars are not cached yet) the fixtures skip
the test, except under ``CI=true``, where they fail it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

LOCALKAFKA_PATH = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "localkafka.py"
LOG_TAIL_LINES = 80
START_TIMEOUT_S = 120.0
TOPIC_READY_TIMEOUT_MS = 30_000

__all__ = [
    "kafka_broker",
    "localkafka",
    "pytest_runtest_makereport",
    "topic_factory",
]


def _load_localkafka() -> ModuleType:
    """Imports deploy/kafka/localkafka.py, which is not on sys.path."""
    name = "localkafka"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LOCALKAFKA_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LOCALKAFKA_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


localkafka = _load_localkafka()


def _skip_or_fail(reason: str) -> None:
    """Skips the test, or fails it when running in CI (CI=true)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)")
    pytest.skip(reason)


def _require_tools() -> None:
    """Skips (fails in CI) unless java, and mvn if the jars are missing, exist."""
    try:
        localkafka.java_executable()
    except localkafka.LocalKafkaError as exc:
        _skip_or_fail(f"Kafka broker unavailable: {exc}")
    if not localkafka.is_provisioned():
        try:
            localkafka.maven_executable()
        except localkafka.LocalKafkaError as exc:
            _skip_or_fail(f"Kafka broker unavailable: {exc}")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Starts one local Kafka broker for the whole test session.

    Yields:
        The running ``localkafka.LocalKafka``; connect clients to its
        ``bootstrap`` (``127.0.0.1:<port>``). Stopped when the session ends.
    """
    _require_tools()
    broker = localkafka.LocalKafka(localkafka.free_port(), tmp_path_factory.mktemp("kafka"))
    broker.start(timeout=START_TIMEOUT_S)
    try:
        yield broker
    finally:
        broker.stop()


def _topic_name(prefix: str) -> str:
    """Makes a unique, legal topic name (Kafka allows [a-zA-Z0-9._-], 249 chars)."""
    clean = re.sub(r"[^a-zA-Z0-9._-]+", "-", prefix).strip("-") or "topic"
    return f"{clean[:200]}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topic_factory(kafka_broker: Any) -> Iterator[Callable[..., str]]:
    """Returns ``create(name_prefix="test", partitions=1, configs=None) -> str``.

    Each call creates a uniquely named topic (replication factor 1) and waits
    until every partition has a leader in the broker's metadata.

    Yields:
        The topic-creating callable.
    """
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=kafka_broker.bootstrap, client_id="netfraud-tests-admin"
    )

    def create(
        name_prefix: str = "test",
        partitions: int = 1,
        configs: dict[str, str] | None = None,
    ) -> str:
        name = _topic_name(name_prefix)
        spec = {
            "num_partitions": partitions,
            "replication_factor": 1,
            "configs": configs or {},
        }
        admin.create_topics({name: spec})
        admin.wait_for_topics([name], timeout_ms=TOPIC_READY_TIMEOUT_MS)
        return name

    try:
        yield create
    finally:
        admin.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Stores each phase's report on the item and attaches the broker log.

    ``item.rep_setup`` / ``item.rep_call`` / ``item.rep_teardown`` are set for
    every test. When a test that uses ``kafka_broker`` (directly or through
    ``topic_factory``) fails, the last lines of the broker log are added to its
    report, shown under the failure in pytest's summary.
    """
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed and "kafka_broker" in getattr(item, "fixturenames", ()):
        broker = getattr(item, "funcargs", {}).get("kafka_broker")
        if isinstance(broker, localkafka.LocalKafka):
            report.sections.append(
                (
                    f"kafka broker log ({broker.log_path}), last {LOG_TAIL_LINES} lines",
                    broker.tail_log(LOG_TAIL_LINES),
                )
            )
    return report
