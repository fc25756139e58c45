"""Backpressure: when alerts cannot be delivered, serve stops fetching, and its
memory stays under ``limits.max_rss_mb``."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Figures,
    Offsets,
    Server,
    Stream,
    alert_keys,
    all_committed,
    metric,
    read_messages,
    replay_on,
    rss_mb,
    scrape,
    summaries,
    unique,
)
from helpers import produce_file, wait_until
from kafka_fixtures import localkafka

pytestmark = pytest.mark.integration
LIMIT_MB = 1_024
STOPPED_S = 15.0


class Sampler(threading.Thread):
    """Reads serve's resident memory and its paused gauge five times a second."""

    def __init__(self, pid: int, port: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.peak_mb = 0.0
        self.paused_seen = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid) or 0.0)
            try:
                status, text = scrape(self.port)
            except OSError:
                continue
            if status == 200 and metric(text, "netfraud_consumer_paused") == 1:
                self.paused_seen = True


def test_stopped_broker_pauses_consumption_and_memory_stays_bounded(
    private_broker: Callable[..., Any],
    replayed_stream: Stream,
    model_registry: Path,
    tmp_path: Path,
) -> None:
    """The broker frozen with SIGSTOP: the batch in hand is retried with
    consumption paused (gauge and log), RSS stays under the ceiling, and once
    the broker runs again every expected alert arrives."""
    broker = private_broker()
    topic = replay_on(broker.bootstrap, replayed_stream)
    alerts, dead, group = unique("bp-alerts"), unique("bp-dlq"), unique("bp")
    port = localkafka.free_port()
    server = Server(broker.bootstrap, topic, model_registry, group, alerts, dead, tmp_path / "s")
    server.args = ["--metrics-port", str(port)]
    server.env = {
        "NETFRAUD_PRODUCER__FLUSH_TIMEOUT_S": "2",
        "NETFRAUD_LIMITS__MAX_RSS_MB": str(LIMIT_MB),
    }
    offsets = Offsets(broker.bootstrap)
    server.start()
    sampler = Sampler(server.pid, port)
    sampler.start()
    assert wait_until(lambda: offsets.progress(group, topic) > replayed_stream.records // 5, 300)
    offsets.close()

    os.kill(broker.pid, signal.SIGSTOP)
    try:
        paused = wait_until(lambda: sampler.paused_seen, 60, 0.2)
        time.sleep(STOPPED_S)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    caught_up = wait_until(lambda: all_committed(broker.bootstrap, group, topic), 300, 1.0)
    sampler.done.set()
    code = server.stop()

    log = server.text()
    reasons = [e.get("reason") for e in summaries(log, "consumer_paused")]
    figures = Figures(
        "backpressure",
        replayed_stream.records,
        set(replayed_stream.expected),
        alert_keys(read_messages(broker.bootstrap, alerts)),
        {
            "peak_rss_mb": round(sampler.peak_mb, 1),
            "max_rss_mb": LIMIT_MB,
            "paused_gauge_seen": sampler.paused_seen,
            "pauses": len(reasons),
            "resumes": log.count('"consumer_resumed"'),
            "batch_not_delivered": log.count('"batch_not_delivered"'),
            "exit_code": code,
        },
    ).show()
    assert paused, server.tail()
    assert "delivery" in reasons
    assert 0 < sampler.peak_mb < LIMIT_MB
    assert caught_up and code == 0, server.tail()
    assert not figures.lost, sorted(figures.lost)[:20]


def test_memory_ceiling_pauses_consumption(
    kafka_broker: Any,
    topic_factory: Any,
    model_registry: Path,
    demo_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Resident memory over limits.max_rss_mb: serve joins the group but fetches
    nothing, shows it in the gauge and the log, and still stops cleanly."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("mem", 3), topic_factory("alerts"), topic_factory("dlq")
    produce_file(bootstrap, topic, demo_data["stream"])
    port = localkafka.free_port()
    server = Server(bootstrap, topic, model_registry, unique("mem"), alerts, dead, tmp_path / "s")
    server.args = ["--metrics-port", str(port)]
    server.env = {"NETFRAUD_LIMITS__MAX_RSS_MB": "64"}  # below any Python with torch

    server.start()
    assigned = wait_until(lambda: '"partitions_assigned"' in server.text(), 120)
    time.sleep(5)
    status, text = scrape(port)
    code = server.stop()

    paused = summaries(server.text(), "consumer_paused")
    consumed = metric(text, "netfraud_records_consumed_total")
    print(
        f"\n[memory-ceiling] max_rss_mb=64 rss_mb={paused[0].get('rss_mb') if paused else None} "
        f"paused_gauge={metric(text, 'netfraud_consumer_paused')} consumed={consumed} "
        f"exit_code={code}"
    )
    assert assigned and status == 200
    assert paused and paused[0]["reason"] == "memory"
    assert metric(text, "netfraud_consumer_paused") == 1
    assert consumed == 0
    assert code == 0
