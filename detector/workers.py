"""``netfraud serve --workers N``: several consumer processes in one group.

One Python process scores on one core at most (the loop holds the GIL), so
more cores need more processes. Each worker is a full ``serve`` in a process
of its own (multiprocessing, spawn), with its own consumer in the same group:
Kafka splits the partitions between them, and a host's context state lives
in the worker that owns its partition, as with separate machines.

What differs per worker:

* metrics: worker ``i`` serves ``/metrics``, ``/healthz`` and ``/readyz`` on
  ``metrics.port + i`` (a port of 0 keeps them all off);
* static membership: with ``consumer.group_instance_id`` set, worker ``i``
  uses ``<id>-<i>``;
* exactly-once: worker ``i`` uses the transactional id the settings give
  (see ``detector.stream.delivery.transactional_id``) followed by ``-w<i>``,
  so that workers never fence each other;
* log lines carry ``worker=i``.

The parent forwards SIGTERM and SIGINT to every worker and exits 0 when all
of them exit 0. If one fails, the others are stopped and the parent exits
with the failed worker's code, so that a supervisor restarts the whole group
instead of leaving it short of a worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from detector.errors import ConfigError, NetfraudError
from detector.logs import get_logger
from detector.settings import Settings

log = get_logger("workers")
#: How often the parent looks at its workers, in seconds.
WATCH_INTERVAL_S = 0.2


def worker_count(value: str) -> int:
    """Parse ``--workers``: a positive number, or ``auto`` for one per usable core.

    Raises:
        ConfigError: Neither a positive integer nor ``auto``.
    """
    if value.strip().lower() == "auto":
        return max(len(os.sched_getaffinity(0)), 1)
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"--workers must be a positive number or 'auto', not {value!r}")
    return count


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker ``index``: its own metrics port, static member
    id and transactional id."""
    from detector.stream.delivery import transactional_id

    metrics, consumer, delivery = settings.metrics, settings.consumer, settings.delivery
    port = metrics.port + index if metrics.port else 0
    instance = f"{consumer.group_instance_id}-{index}" if consumer.group_instance_id else None
    transactional = None
    if delivery.mode == "exactly-once":
        transactional = f"{transactional_id(settings)}-w{index}"
    return settings.model_copy(
        update={
            "metrics": metrics.model_copy(update={"port": port}),
            "consumer": consumer.model_copy(update={"group_instance_id": instance}),
            "delivery": delivery.model_copy(update={"transactional_id": transactional}),
        }
    )


def run_workers(settings: Settings, count: int, stop_after_idle_s: float | None = None) -> int:
    """Run ``count`` serve processes until they all exit; return the exit code."""
    if settings.metrics.port and settings.metrics.port + count - 1 > 65_535:
        raise ConfigError(
            f"metrics.port {settings.metrics.port} + {count - 1} workers is beyond 65535"
        )
    spawn = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = [
        spawn.Process(
            target=_worker,
            args=(worker_settings(settings, i), i, stop_after_idle_s),
            name=f"netfraud-worker-{i}",
        )
        for i in range(count)
    ]
    forwarded = _forward_signals(workers)
    for worker in workers:
        worker.start()
    log.info("workers_started", workers=count, pids=[w.pid for w in workers])
    return _wait(workers, forwarded)


def _forward_signals(workers: list[BaseProcess]) -> list[int]:
    """Pass SIGTERM and SIGINT on to every live worker; return the list of
    signals forwarded so far (filled in as they arrive)."""
    forwarded: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        forwarded.append(signum)
        log.info("stopping_workers", signal=signal.Signals(signum).name)
        _signal_all(workers, signum)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return forwarded


def _signal_all(workers: list[BaseProcess], signum: int) -> None:
    for worker in workers:
        if worker.pid is not None and worker.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)


def _wait(workers: list[BaseProcess], forwarded: list[int]) -> int:
    """Wait for every worker; stop the others as soon as one fails."""
    failed: int | None = None
    running = list(workers)
    while running:
        time.sleep(WATCH_INTERVAL_S)
        for worker in [w for w in running if w.exitcode is not None]:
            running.remove(worker)
            code = _exit_code(worker.exitcode or 0, forwarded)
            log.info("worker_exited", worker=worker.name, exit_code=code)
            if code != 0 and failed is None:
                failed = code
                log.error("worker_failed", worker=worker.name, exit_code=code)
                _signal_all(running, signal.SIGTERM)
    return failed or 0


def _exit_code(exitcode: int, forwarded: list[int]) -> int:
    """A worker ended by a signal we forwarded (before it could install its
    own handler) stopped cleanly: it had committed nothing it had not
    finished. Any other signal is a failure, as 128 + signal number."""
    if exitcode >= 0:
        return exitcode
    if -exitcode in forwarded:
        return 0
    return 128 - exitcode


def _worker(settings: Settings, index: int, stop_after_idle_s: float | None) -> None:
    """Body of one worker process."""
    import structlog

    from detector import logs
    from detector.serve import serve

    logs.configure(settings.log.level, settings.log.format)
    structlog.contextvars.bind_contextvars(worker=index)
    try:
        code = serve(settings, stop_after_idle_s=stop_after_idle_s)
    except NetfraudError as exc:
        print(f"netfraud: worker {index}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
