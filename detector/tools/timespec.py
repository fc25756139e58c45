"""Durations (``15m``, ``7d``) and points in time (ISO 8601 or ``2h`` ago) on the command line."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from detector.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``15m``, ``2h``, ``7d`` or ``1w``.

    Raises:
        ConfigError: The text is not a positive number followed by one unit.
    """
    match = _DURATION.match(text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{text!r} is not a duration; write a positive number and a unit, "
            "s, m, h, d or w (for example 15m or 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``text``: a duration ago (``15m``) or an ISO 8601 time.

    A time without a zone is taken as UTC.

    Raises:
        ConfigError: The text is neither.
    """
    if _DURATION.match(text.lower()):
        return (time.time() if now is None else now) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration (15m, 2h, 7d) nor an ISO time "
            "(2026-01-06T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
