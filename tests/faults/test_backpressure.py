"""Backpressure: when alerts cannot be delivered, serve stops fetching, and its
memory stays under ``limits.max_rss_mb``.

The fault is an alerts topic that refuses every write (its
``max.message.bytes`` below an alert's size) while the input stays readable:
the alerts producer cannot deliver at all, and nothing else is wrong. (Freezing
the broker with SIGSTOP also stops the fetches, so whether a batch is in hand
when it freezes is a matter of timing.)
"""

from __future__ import annotations

import threading
import time
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
    create_topics,
    metric,
    read_messages,
    rss_mb,
    scrape,
    summaries,
    unique,
)
from helpers import produce_file, wait_until
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka_fixtures import localkafka

pytestmark = pytest.mark.integration
#: The ceiling while held: above serve's footprint at rest here (about 960 MiB with
#: the CUDA build of torch and numba's LLVM, much of it shared library pages), so
#: that a pause for memory would mean the held batches grew without bound.
LIMIT_MB = 1_280
HELD_S = 15.0


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


def _refuse_alerts(bootstrap: str, topic: str, refuse: bool) -> None:
    """Make a topic refuse every alert (``max.message.bytes`` below an alert's
    size) or take them again; reads of other topics are not affected."""
    limit = "512" if refuse else "1048588"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": limit})]
        )
    finally:
        admin.close()


def test_unwritable_alerts_topic_pauses_consumption_and_memory_stays_bounded(
    kafka_broker: Any,
    replayed_stream: Stream,
    model_registry: Path,
    tmp_path: Path,
) -> None:
    """The alerts topic refuses writes for the first 15 s while the input can
    be read: the batch in hand waits with consumption paused (gauge and log),
    nothing is committed meanwhile, RSS stays under the ceiling, and once the
    topic takes writes again every expected alert arrives."""
    bootstrap, topic = kafka_broker.bootstrap, replayed_stream.topic
    alerts, dead, group = unique("bp-alerts"), unique("bp-dlq"), unique("bp")
    create_topics(bootstrap, {alerts: 1, dead: 1})
    _refuse_alerts(bootstrap, alerts, True)
    port = localkafka.free_port()
    server = Server(bootstrap, topic, model_registry, group, alerts, dead, tmp_path / "s")
    server.args = ["--metrics-port", str(port)]
    server.env = {
        "NETFRAUD_PRODUCER__FLUSH_TIMEOUT_S": "2",
        "NETFRAUD_LIMITS__MAX_RSS_MB": str(LIMIT_MB),
    }
    offsets = Offsets(bootstrap)
    server.start()
    sampler = Sampler(server.pid, port)
    sampler.start()

    paused = wait_until(lambda: sampler.paused_seen, 120, 0.2)
    held_at = offsets.progress(group, topic)
    time.sleep(HELD_S)
    moved_while_held = offsets.progress(group, topic) - held_at
    _refuse_alerts(bootstrap, alerts, False)
    offsets.close()
    caught_up = wait_until(lambda: all_committed(bootstrap, group, topic), 300, 1.0)
    sampler.done.set()
    code = server.stop()

    log = server.text()
    reasons = [e.get("reason") for e in summaries(log, "consumer_paused")]
    figures = Figures(
        "backpressure",
        replayed_stream.records,
        set(replayed_stream.expected),
        alert_keys(read_messages(bootstrap, alerts)),
        {
            "peak_rss_mb": round(sampler.peak_mb, 1),
            "max_rss_mb": LIMIT_MB,
            "paused_gauge_seen": sampler.paused_seen,
            "committed_while_held": moved_while_held,
            "pauses": len(reasons),
            "resumes": log.count('"consumer_resumed"'),
            "batch_not_delivered": log.count('"batch_not_delivered"'),
            "exit_code": code,
        },
    ).show()
    assert paused, server.tail()
    assert "delivery" in reasons
    assert moved_while_held == 0
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
