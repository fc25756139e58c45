"""Wiring for ``netfraud serve``: settings in, a running detector out."""

from __future__ import annotations

import gc
import signal
import threading
import time
from types import FrameType

from detector.errors import ConfigError
from detector.lifecycle.drift import DriftMonitor
from detector.lifecycle.retrain import start_schedule
from detector.logs import get_logger
from detector.model.holder import ModelHolder
from detector.model.registry import Registry
from detector.ops.health import HealthServer
from detector.ops.metrics import Metrics
from detector.settings import Settings
from detector.stream.archive import ArchiveWriter
from detector.stream.loop import Detector, Policy
from detector.stream.suppressions import Suppressions
from detector.stream.transport import Transport

log = get_logger("serve")
#: Seconds serve waits for the suppression rules before it starts scoring.
SUPPRESSIONS_LOAD_TIMEOUT_S = 30.0
#: The collector's thresholds while serving: a young-generation pass every
#: 50,000 new container objects instead of 700. A batch makes a few per
#: record (the clients' records, messages) that live until the batch is done,
#: so at 700 the collector ran many times per batch only to find them alive
#: (docs/performance.md has the figures). Cycles are still collected.
GC_THRESHOLDS = (50_000, 20, 100)


def make_transport(settings: Settings) -> Transport:
    """The Kafka client chosen by ``kafka.client``."""
    if settings.kafka.client == "confluent":
        try:
            from detector.stream.confluent import ConfluentTransport
        except ImportError as exc:
            raise ConfigError(
                "kafka.client = 'confluent' needs the confluent extra: "
                "pip install 'netfraud[confluent]'"
            ) from exc
        return ConfluentTransport(settings, settings.topics.input)
    from detector.stream.kafka_python import KafkaPythonTransport

    return KafkaPythonTransport(settings, settings.topics.input)


def serve(settings: Settings, stop_after_idle_s: float | None = None) -> int:
    """Run the detector until SIGTERM/SIGINT (or until idle, if asked).

    Returns:
        The process exit code (0 on a clean stop).
    """
    log.info("starting", settings=settings.masked())
    if settings.model.threads:
        import torch

        torch.set_num_threads(settings.model.threads)
    stop = threading.Event()
    _on_signals(stop)
    models = ModelHolder(
        Registry(settings.model.registry), settings.model.device, settings.model.reload_interval_s
    )
    metrics = Metrics()
    transport = make_transport(settings)
    suppressions = _suppressions(settings)
    archive = _archive(settings)
    detector = Detector(
        settings,
        transport,
        models,
        metrics,
        Policy(suppress=suppressions),
        archive=archive,
        monitor=DriftMonitor(metrics, settings.drift),
    )
    if settings.retrain.every:
        start_schedule(settings, stop)
    health = _health(settings, detector, transport, models, metrics)
    if stop_after_idle_s:
        _stop_when_idle(detector, transport, stop, stop_after_idle_s)
    log.info(
        "serving",
        model_version=models.active.bundle.version,
        topics=list(settings.topics.input),
        group=settings.consumer.group_id,
    )
    # What is loaded by now (torch, the model, clients) lives as long as the
    # process. Frozen, it is left out of the collector's full passes, which
    # otherwise rescan it several times a second under load: about a fifth of
    # the loop's CPU time (docs/performance.md).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        detector.run(stop)
    finally:
        transport.close()
        suppressions.stop()
        models.close()
        if archive:
            archive.close()
        if health:
            health.stop()
        log.info("stopped")
    return 0


def _suppressions(settings: Settings) -> Suppressions:
    """Follow the feedback topic; wait a while for its rules so that a restart
    does not alert on what analysts already suppressed."""
    suppressions = Suppressions().start(settings)
    if not suppressions.wait_ready(SUPPRESSIONS_LOAD_TIMEOUT_S):
        log.warning(
            "suppressions_not_loaded",
            topic=settings.topics.feedback,
            waited_s=SUPPRESSIONS_LOAD_TIMEOUT_S,
        )
    return suppressions


def _archive(settings: Settings) -> ArchiveWriter | None:
    """The archive writer for ``[archive] path``, if one is set."""
    if settings.archive.path is None:
        return None
    writer = ArchiveWriter.from_settings(settings.archive)
    log.info("archiving", path=str(writer.path), retention_hours=writer.retention_hours)
    return writer


def _on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _health(
    settings: Settings,
    detector: Detector,
    transport: Transport,
    models: ModelHolder,
    metrics: Metrics,
) -> HealthServer | None:
    if not settings.metrics.port:
        return None
    stale_after = max(30.0, settings.consumer.max_poll_interval_ms / 1000)

    def alive() -> dict[str, bool]:
        return {"loop": time.monotonic() - detector.alive_at < stale_after}

    def ready() -> dict[str, bool]:
        connected = getattr(transport, "connected", lambda: True)()
        return {
            "partitions_assigned": bool(transport.assignment()),
            "model_loaded": models.active is not None,
            "producer_connected": bool(connected),
        }

    server = HealthServer(
        settings.metrics.host, settings.metrics.port, metrics.registry, alive, ready
    )
    log.info("metrics_listening", port=server.port)
    return server.start()


def _stop_when_idle(
    detector: Detector, transport: Transport, stop: threading.Event, idle_s: float
) -> None:
    """For demos and batch runs: stop once no record has arrived for ``idle_s``
    while partitions were assigned (waiting to join the group is not idle)."""

    def watch() -> None:
        while not stop.wait(0.5):
            if not transport.assignment():
                detector.last_record_at = time.monotonic()
            elif time.monotonic() - detector.last_record_at > idle_s:
                log.info("idle_stop", idle_s=idle_s)
                stop.set()

    threading.Thread(target=watch, name="idle-stop", daemon=True).start()
