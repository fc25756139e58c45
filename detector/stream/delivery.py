"""Delivery guarantees as strategies: how a batch's output and offsets become durable.

The loop hands every batch to one :class:`Delivery`, chosen by
``delivery.mode``:

* ``at-least-once`` (:class:`AtLeastOnce`): produce the alerts and dead
  letters, wait until the broker has acknowledged each of them, then commit
  the offsets. A crash between the two publishes the batch again after the
  restart; a failed commit is counted and the batch may be read twice.
* ``exactly-once`` (:class:`ExactlyOnce`): produce the batch's output and
  its offsets in one Kafka transaction. A reader of the alerts topic with
  ``isolation.level=read_committed`` sees each alert once, whatever crashes.

Either raises :class:`~detector.errors.DeliveryError` (or another
:class:`~detector.errors.TransportError`) when nothing of the batch can be
counted on; the loop then waits and calls it again with the same batch.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from detector.errors import ConfigError, TransportError
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.transport import Headers, TopicPartition, Transactional, Transport

log = get_logger("delivery")

#: Times one step of a batch under a stage name (``produce``, ``commit``).
Timer = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message a batch publishes: an alert or a dead letter.

    Attributes:
        topic: Where it goes.
        value: Its bytes.
        key: Its key (``None`` for none).
        headers: Its headers (``None`` for none).
        origin: The input partition of the record it comes from.
    """

    topic: str
    value: bytes
    key: bytes | None
    headers: Headers | None
    origin: TopicPartition


class Delivery(Protocol):
    """Makes one batch's output and offsets durable, or raises."""

    #: The ``delivery.mode`` it implements.
    name: str

    def publish_and_commit(
        self,
        outgoing: Sequence[Outgoing],
        offsets: Mapping[TopicPartition, int],
        timed: Timer,
        attempt: int = 0,
    ) -> bool:
        """Publish ``outgoing`` and commit ``offsets`` (the next offset to read).

        Args:
            outgoing: The batch's alerts and dead letters.
            offsets: Per input partition, the offset after the batch.
            timed: Times each step under its stage name.
            attempt: 0 for a fresh batch, then 1, 2, ... for retries of it.

        Returns:
            Whether the offsets were committed (``False``: published, but the
            batch will be read again).

        Raises:
            DeliveryError: Not everything was acknowledged; retry the batch.
            TransportError: Kafka could not be used; retry unless the error
                says it is not retriable.
        """
        ...


@runtime_checkable
class _Owner(Protocol):
    def assignment(self) -> Sequence[TopicPartition]: ...


@runtime_checkable
class _InFlight(Protocol):
    def in_flight(self) -> int: ...


@runtime_checkable
class _Transactions(Protocol):
    def begin_transaction(self) -> None: ...

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], timeout_s: float
    ) -> None: ...

    def abort_transaction(self) -> None: ...


def owned_only(
    transport: object, outgoing: Sequence[Outgoing], offsets: Mapping[TopicPartition, int]
) -> tuple[list[Outgoing], dict[TopicPartition, int]]:
    """Drop the output and offsets of partitions this consumer no longer owns.

    A rebalance during a batch hands its partitions to another consumer,
    which reads them again from the last commit: publishing their alerts here
    too would duplicate them (and break exactly-once).
    """
    if not isinstance(transport, _Owner):  # a test double that owns everything
        return list(outgoing), dict(offsets)
    owned = set(transport.assignment())
    gone = {tp for tp in offsets if tp not in owned}
    if gone:
        log.info("batch_partitions_revoked", partitions=sorted(f"{t}[{p}]" for t, p in gone))
    kept = [o for o in outgoing if o.origin in owned]
    return kept, {tp: o for tp, o in offsets.items() if tp in owned}


class AtLeastOnce:
    """Produce, wait for every acknowledgement, then commit.

    A retry of the same batch first waits for the messages still in flight
    from the attempt before, instead of sending copies of them: a slow
    broker then gets no more to do than it had.

    Args:
        transport: The Kafka client.
        flush_timeout_s: Longest wait for acknowledgements per attempt.
    """

    name = "at-least-once"

    def __init__(self, transport: Transport, flush_timeout_s: float) -> None:
        self.transport = transport
        self.flush_timeout_s = flush_timeout_s

    def publish_and_commit(
        self,
        outgoing: Sequence[Outgoing],
        offsets: Mapping[TopicPartition, int],
        timed: Timer,
        attempt: int = 0,
    ) -> bool:
        """See :meth:`Delivery.publish_and_commit`."""
        outgoing, offsets = owned_only(self.transport, outgoing, offsets)
        with timed("produce"):
            if not (attempt and self._in_flight()):
                for o in outgoing:
                    self.transport.produce(o.topic, o.value, o.key, o.headers)
            self.transport.flush(self.flush_timeout_s)
        with timed("commit"):
            return self._commit(offsets)

    def _in_flight(self) -> int:
        return self.transport.in_flight() if isinstance(self.transport, _InFlight) else 0

    def _commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        if not offsets:
            return True
        try:
            self.transport.commit(offsets)
        except Exception as exc:  # the batch is read again by the partition's owner
            log.warning("commit_failed", error=str(exc))
            return False
        return True


class ExactlyOnce:
    """One transaction per batch: its alerts, dead letters and offsets.

    Args:
        transport: A Kafka client with transactions.
        flush_timeout_s: Longest wait for acknowledgements per attempt.
    """

    name = "exactly-once"

    def __init__(self, transport: Transactional, flush_timeout_s: float) -> None:
        self.transport = transport
        self.flush_timeout_s = flush_timeout_s

    def publish_and_commit(
        self,
        outgoing: Sequence[Outgoing],
        offsets: Mapping[TopicPartition, int],
        timed: Timer,
        attempt: int = 0,
    ) -> bool:
        """See :meth:`Delivery.publish_and_commit`; a failure aborts the transaction."""
        outgoing, offsets = owned_only(self.transport, outgoing, offsets)
        if not outgoing and not offsets:
            return True
        try:
            with timed("produce"):
                self.transport.begin_transaction()
                for o in outgoing:
                    self.transport.produce(o.topic, o.value, o.key, o.headers)
            with timed("commit"):
                self.transport.commit_transaction(offsets, self.flush_timeout_s)
        except TransportError:
            self._abort()
            raise
        return True

    def _abort(self) -> None:
        # A broker that is gone cannot abort either; the transaction then
        # times out on the broker, and the next begin starts clean.
        with contextlib.suppress(Exception):
            self.transport.abort_transaction()


#: ``delivery.mode`` -> the strategy that implements it.
MODES: dict[str, Callable[[Transport, float], Delivery]] = {
    AtLeastOnce.name: AtLeastOnce,
    ExactlyOnce.name: lambda transport, timeout: ExactlyOnce(_transactional(transport), timeout),
}


def make_delivery(settings: Settings, transport: Transport) -> Delivery:
    """The delivery strategy that ``delivery.mode`` names."""
    return MODES[settings.delivery.mode](transport, settings.producer.flush_timeout_s)


def _transactional(transport: Transport) -> Transactional:
    if not isinstance(transport, _Transactions):
        raise ConfigError(
            f"delivery.mode = 'exactly-once' needs transactions, which {type(transport).__name__} "
            "does not offer; use kafka.client = 'kafka-python' or delivery.mode = 'at-least-once'"
        )
    return cast(Transactional, transport)


def transactional_id(settings: Settings) -> str:
    """The producer's transactional id: ``delivery.transactional_id`` if set.

    Otherwise ``<group>-<hostname>-<instance>``, where the instance is the
    static membership id, else the metrics port (both unique on a host and
    stable across restarts), else ``0``. A restart with the same id fences
    the instance before it and aborts its open transaction at once.
    """
    if settings.delivery.transactional_id:
        return settings.delivery.transactional_id
    consumer, port = settings.consumer, settings.metrics.port
    instance = consumer.group_instance_id or (f"m{port}" if port else "0")
    return f"{consumer.group_id}-{socket.gethostname()}-{instance}"
