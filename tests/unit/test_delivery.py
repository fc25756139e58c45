"""Delivery strategies, backpressure and the memory watchdog, without a broker."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from detector.errors import ConfigError, DeliveryError, FencedError
from detector.model.holder import ModelHolder
from detector.model.registry import Registry
from detector.ops.memory import MemoryWatchdog, rss_mb
from detector.settings import load_settings
from detector.stream.backpressure import Backpressure
from detector.stream.delivery import (
    AtLeastOnce,
    ExactlyOnce,
    Outgoing,
    make_delivery,
    transactional_id,
)
from detector.stream.loop import Detector
from detector.stream.transport import Message, TopicPartition
from detector.tools.generate import DEFAULT_START, generate

TP = ("flows", 0)


@contextlib.contextmanager
def _untimed(stage: str) -> Iterator[None]:
    yield


class FakeTransport:
    """Records calls; ``fail_flushes`` flushes raise before one succeeds."""

    def __init__(self, fail_flushes: int = 0, owned: Sequence[TopicPartition] = (TP,)) -> None:
        self.calls: list[str] = []
        self.produced: list[tuple[str, bytes]] = []
        self.fail_flushes = fail_flushes
        self.owned = list(owned)
        self.pending = 0
        self.committed: list[dict[TopicPartition, int]] = []

    def produce(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> None:
        self.calls.append("produce")
        self.produced.append((topic, value))
        self.pending += 1

    def flush(self, timeout_s: float) -> None:
        self.calls.append("flush")
        if self.fail_flushes:
            self.fail_flushes -= 1
            raise DeliveryError("broker did not acknowledge")
        self.pending = 0

    def in_flight(self) -> int:
        return self.pending

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.calls.append("commit")
        self.committed.append(dict(offsets))

    def assignment(self) -> Sequence[TopicPartition]:
        return self.owned

    def warm_until(self) -> dict[TopicPartition, int]:
        return {}

    def poll(self, max_records: int, max_wait_ms: int) -> list[Message]:
        time.sleep(0.05)  # paused: nothing comes
        return []

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.calls.append("rewind")

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


class FakeTransactional(FakeTransport):
    """Adds transactions; ``fail_commits`` commits raise before one succeeds."""

    def __init__(self, fail_commits: int = 0, fenced: bool = False) -> None:
        super().__init__()
        self.fail_commits = fail_commits
        self.fenced = fenced

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def commit_transaction(self, offsets: Mapping[TopicPartition, int], timeout_s: float) -> None:
        self.calls.append("commit_transaction")
        if self.fenced:
            raise FencedError("another instance took over")
        if self.fail_commits:
            self.fail_commits -= 1
            raise DeliveryError("not committed")
        self.committed.append(dict(offsets))

    def abort_transaction(self) -> None:
        self.calls.append("abort")


def _out(*partitions: int) -> list[Outgoing]:
    return [Outgoing("alerts", b"{}", None, None, ("flows", p)) for p in partitions]


def test_at_least_once_produces_flushes_then_commits() -> None:
    """Acknowledgements come before the commit."""
    transport = FakeTransport()
    done = AtLeastOnce(transport, 1.0).publish_and_commit(_out(0, 0), {TP: 10}, _untimed)
    assert done
    assert transport.calls == ["produce", "produce", "flush", "commit"]


def test_a_retry_waits_for_messages_in_flight_instead_of_sending_copies() -> None:
    """After a flush timeout, the retry flushes again without producing twice."""
    transport = FakeTransport(fail_flushes=1)
    delivery = AtLeastOnce(transport, 1.0)
    with pytest.raises(DeliveryError):
        delivery.publish_and_commit(_out(0), {TP: 1}, _untimed)
    delivery.publish_and_commit(_out(0), {TP: 1}, _untimed, attempt=1)
    assert transport.calls == ["produce", "flush", "flush", "commit"]
    assert len(transport.produced) == 1


def test_output_and_offsets_of_revoked_partitions_are_dropped() -> None:
    """A partition lost in a rebalance is neither published nor committed here."""
    transport = FakeTransport(owned=[TP])
    AtLeastOnce(transport, 1.0).publish_and_commit(_out(0, 1), {TP: 5, ("flows", 1): 7}, _untimed)
    assert len(transport.produced) == 1
    assert transport.committed == [{TP: 5}]


def test_a_failed_commit_is_reported_not_raised() -> None:
    """At-least-once: a commit that fails leaves the batch to be read again."""
    transport = FakeTransport()

    def refuse(offsets: Mapping[TopicPartition, int]) -> None:
        raise RuntimeError("rebalance in progress")

    transport.commit = refuse  # type: ignore[method-assign]
    assert not AtLeastOnce(transport, 1.0).publish_and_commit(_out(0), {TP: 1}, _untimed)


def test_exactly_once_is_one_transaction_per_batch() -> None:
    """Begin, produce, then offsets and commit in the transaction; no plain commit."""
    transport = FakeTransactional()
    ExactlyOnce(transport, 1.0).publish_and_commit(_out(0), {TP: 3}, _untimed)
    assert transport.calls == ["begin", "produce", "commit_transaction"]
    assert transport.committed == [{TP: 3}]


def test_exactly_once_aborts_on_failure_and_raises() -> None:
    """A failed commit aborts the transaction so that the retry starts clean."""
    transport = FakeTransactional(fail_commits=1)
    with pytest.raises(DeliveryError):
        ExactlyOnce(transport, 1.0).publish_and_commit(_out(0), {TP: 3}, _untimed)
    assert transport.calls[-1] == "abort"


def test_exactly_once_needs_a_transport_with_transactions() -> None:
    """Asking for exactly-once over a client without transactions names the fix."""
    settings = load_settings(environ={"NETFRAUD_DELIVERY__MODE": "exactly-once"})
    with pytest.raises(ConfigError, match="needs transactions"):
        make_delivery(settings, FakeTransport())  # type: ignore[arg-type]
    assert make_delivery(settings, FakeTransactional()).name == "exactly-once"  # type: ignore[arg-type]


def test_transactional_id_is_stable_and_per_instance() -> None:
    """Default: group, host and instance id (or metrics port); an explicit id wins."""
    base = {"NETFRAUD_CONSUMER__GROUP_ID": "g", "NETFRAUD_METRICS__PORT": "9400"}
    by_port = transactional_id(load_settings(environ=base))
    static = transactional_id(
        load_settings(environ={**base, "NETFRAUD_CONSUMER__GROUP_INSTANCE_ID": "node-3"})
    )
    explicit = load_settings(environ={**base, "NETFRAUD_DELIVERY__TRANSACTIONAL_ID": "tx-1"})
    assert by_port.startswith("g-") and by_port.endswith("-m9400")
    assert by_port == transactional_id(load_settings(environ=base))
    assert static.endswith("-node-3")
    assert transactional_id(explicit) == "tx-1"


def test_backpressure_pauses_once_and_resumes_after_the_last_reason() -> None:
    """Two reasons: one pause, and the resume only when both are released."""
    transport = FakeTransport()
    gauge = Gauge("paused", "test", registry=CollectorRegistry())
    pressure = Backpressure(transport, gauge)
    pressure.hold("delivery")
    pressure.hold("memory")
    pressure.release("delivery")
    assert pressure.paused and gauge._value.get() == 1
    pressure.release("memory")
    assert transport.calls == ["pause", "resume"]
    assert not pressure.paused and gauge._value.get() == 0


def test_memory_watchdog_trips_above_the_limit_and_clears_below_nine_tenths() -> None:
    """Hysteresis: 110 trips a 100 MiB limit, 95 keeps it tripped, 85 clears it."""
    readings = iter([50.0, 110.0, 95.0, 85.0])
    watchdog = MemoryWatchdog(100.0, read=lambda: next(readings), check_every_s=0.0)
    assert [watchdog.over() for _ in range(4)] == [False, True, True, False]
    assert MemoryWatchdog(0.0, read=lambda: 1e9).over() is False
    assert (rss_mb() or 1.0) > 0


@pytest.fixture(scope="module")
def batch() -> list[Message]:
    rows = generate(400, seed=9, attacks=True, start=DEFAULT_START + 86_400, hours=0.5)
    return [Message("flows", 0, i, None, json.dumps(r).encode(), 0) for i, r in enumerate(rows)]


def _detector(model_registry: Path, transport: Any, **env: str) -> Detector:
    settings = load_settings(environ={f"NETFRAUD_{k}": v for k, v in env.items()})
    return Detector(settings, transport, ModelHolder(Registry(model_registry), "cpu", 60))


def test_loop_retries_the_batch_in_hand_paused_and_scores_it_once(
    model_registry: Path, batch: list[Message]
) -> None:
    """Two failed deliveries: the batch is retried without re-reading it, with
    consumption paused meanwhile, and its context is folded in once."""
    transport = FakeTransport(fail_flushes=2)
    detector = _detector(model_registry, transport)
    seen_before = len(detector.vectorizer.context)

    report = detector.process(batch)

    assert transport.calls.count("flush") == 3
    assert transport.calls.count("pause") == 1 and transport.calls[-1] == "resume"
    assert transport.calls.index("pause") < transport.calls.index("resume")
    assert "rewind" not in transport.calls
    assert len(transport.produced) == report.alerts  # sent once, waited for twice
    assert seen_before == 0 < len(detector.vectorizer.context)
    assert detector.metrics.produce_failures._value.get() == 2


def test_loop_stops_on_an_error_that_is_not_retriable(
    model_registry: Path, batch: list[Message]
) -> None:
    """A fenced transactional producer ends the loop with the error."""
    transport = FakeTransactional(fenced=True)
    transport.poll = lambda max_records, max_wait_ms: batch  # type: ignore[method-assign]
    detector = _detector(model_registry, transport, DELIVERY__MODE="exactly-once")
    with pytest.raises(FencedError):
        detector.run(threading.Event())
    assert transport.calls[-1] == "abort"
