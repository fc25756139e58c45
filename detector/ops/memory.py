"""Resident memory of a process, and a watchdog for the loop's ceiling.

The loop holds one micro-batch at a time, so its memory is bounded by design;
the watchdog is the guard for what the design does not foresee (a model or
context state grown beyond its budget, a leak). Above ``limits.max_rss_mb``
the loop stops fetching until the resident memory is back under the ceiling.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

#: Once over the ceiling, fetching resumes below this share of it.
RESUME_SHARE = 0.9
#: Seconds between two readings of /proc.
CHECK_EVERY_S = 1.0


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident set size of a process in MiB, from ``/proc/<pid>/status``.

    Returns:
        The size, or ``None`` where procfs is missing (not Linux) or the
        process is gone.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # reported in kB
    return None


class MemoryWatchdog:
    """Says whether resident memory is over the ceiling, with hysteresis.

    Args:
        limit_mb: The ceiling in MiB; 0 turns the watchdog off.
        read: Returns the resident memory in MiB (``None``: unknown).
        check_every_s: Least time between two readings.
    """

    def __init__(
        self,
        limit_mb: float,
        read: Callable[[], float | None] = rss_mb,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.limit_mb = limit_mb
        self.read = read
        self.check_every_s = check_every_s
        self.last_mb: float | None = None
        self.tripped = False
        self._checked_at = -float("inf")

    def over(self) -> bool:
        """Whether consumption should stay paused for memory now."""
        now = time.monotonic()
        if not self.limit_mb or now - self._checked_at < self.check_every_s:
            return self.tripped
        self._checked_at = now
        self.last_mb = self.read()
        if self.last_mb is None:
            return False
        if not self.tripped and self.last_mb > self.limit_mb:
            self.tripped = True
            gc.collect()  # garbage cycles are the one thing that is cheap to give back
        elif self.tripped and self.last_mb < self.limit_mb * RESUME_SHARE:
            self.tripped = False
        return self.tripped
