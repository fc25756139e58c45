"""Pausing consumption while the detector cannot take more.

Two things hold consumption: a batch whose alerts the broker does not
acknowledge (``delivery``), and resident memory over its ceiling
(``memory``). Fetching stops while any reason holds and starts again when
the last one is released, so that records wait in Kafka, not in this
process.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from prometheus_client import Gauge

from detector.logs import get_logger

log = get_logger("backpressure")


class Pausable(Protocol):
    """The part of a transport that stops and restarts fetching."""

    def pause(self) -> None:
        """Stop fetching from every owned partition."""
        ...

    def resume(self) -> None:
        """Fetch again."""
        ...


class Backpressure:
    """Pauses a consumer while at least one reason holds.

    Args:
        transport: The consumer to pause.
        gauge: Set to 1 while paused, 0 otherwise.
    """

    def __init__(self, transport: Pausable, gauge: Gauge) -> None:
        self.transport = transport
        self.gauge = gauge
        self.reasons: dict[str, float] = {}  # reason -> monotonic time it began

    @property
    def paused(self) -> bool:
        """Whether fetching is stopped."""
        return bool(self.reasons)

    def hold(self, reason: str, **context: Any) -> None:
        """Pause for ``reason`` (a no-op while it already holds)."""
        if reason in self.reasons:
            return
        if not self.reasons:
            self.transport.pause()
            self.gauge.set(1)
        self.reasons[reason] = time.monotonic()
        log.warning("consumer_paused", reason=reason, **context)

    def release(self, reason: str) -> None:
        """Drop ``reason``; resume when no other reason holds."""
        began = self.reasons.pop(reason, None)
        if began is None:
            return
        if not self.reasons:
            self.transport.resume()
            self.gauge.set(0)
        log.info(
            "consumer_resumed",
            reason=reason,
            paused_s=round(time.monotonic() - began, 3),
            still_paused_for=sorted(self.reasons),
        )
