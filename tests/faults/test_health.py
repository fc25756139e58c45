"""/healthz, /readyz and /metrics of a running serve: present, true, and moving."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from harness import Server, metric, samples, scrape, unique
from helpers import caught_up, produce, produce_file, wait_until
from kafka_fixtures import localkafka

pytestmark = pytest.mark.integration
ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}|:\d{2,5}$|::")
#: Metric -> labels that must be present on its samples.
EXPECTED = {
    "netfraud_records_consumed_total": {"topic"},
    "netfraud_records_scored_total": set(),
    "netfraud_records_invalid_total": {"reason"},
    "netfraud_alerts_total": {"severity"},
    "netfraud_batch_stage_seconds_count": {"stage"},
    "netfraud_record_to_alert_seconds_count": set(),
    "netfraud_consumer_lag": {"topic", "partition"},
    "netfraud_model_info": {"version"},
    "netfraud_commit_failures_total": set(),
    "netfraud_consumer_paused": set(),
}
#: Those that must have grown between a scrape before the traffic and one after it.
MOVING = (
    "netfraud_records_consumed_total",
    "netfraud_records_scored_total",
    "netfraud_records_invalid_total",
    "netfraud_alerts_total",
    "netfraud_batch_stage_seconds_count",
    "netfraud_record_to_alert_seconds_count",
)


def _probe(port: int, path: str) -> tuple[int, dict[str, bool]]:
    status, body = scrape(port, path)
    return status, json.loads(body)


def test_probes_and_metrics_of_a_running_serve(
    kafka_broker: Any,
    topic_factory: Any,
    model_registry: Path,
    demo_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Probes answer 200 with every check true; each metric is exported, the
    counters move with traffic, and no label carries an address."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("health", 3), topic_factory("alerts"), topic_factory("dlq")
    group, port = unique("health"), localkafka.free_port()
    server = Server(bootstrap, topic, model_registry, group, alerts, dead, tmp_path / "s")
    server.args = ["--metrics-port", str(port)]
    server.env = {"NETFRAUD_METRICS__SUMMARY_INTERVAL_S": "1"}

    server.start()
    ready = wait_until(lambda: _ready(port), 120)
    _, before = scrape(port)
    rows = produce_file(bootstrap, topic, demo_data["stream"])
    produce(bootstrap, topic, [(None, b"{not json"), (b"k", b'{"ts": 1}')])
    assert wait_until(lambda: caught_up(bootstrap, group, topic), 300), server.tail()
    wait_until(lambda: metric(scrape(port)[1], "netfraud_consumer_lag") == 0, 10)
    _, after = scrape(port)
    live, ready_checks = _probe(port, "/healthz"), _probe(port, "/readyz")
    code = server.stop()

    figures = {name: (metric(before, name), metric(after, name)) for name in EXPECTED}
    print(f"\n[health] records_in={len(rows) + 2} healthz={live} readyz={ready_checks}")
    for name, (was, now) in figures.items():
        print(f"[health] {name}: {was:g} -> {now:g}")
    assert ready, server.tail()
    assert live == (200, {"loop": True})
    assert ready_checks[0] == 200 and all(ready_checks[1].values()), ready_checks
    exported = {(n, frozenset(ls)) for n, ls, _ in samples(after)}
    for name, labels in EXPECTED.items():
        assert any(n == name and labels <= ls for n, ls in exported), f"{name} is missing"
    for name in MOVING:
        assert figures[name][1] > figures[name][0], f"{name} did not move"
    assert metric(after, "netfraud_records_invalid_total") == 2
    assert metric(after, "netfraud_records_consumed_total", topic=topic) == len(rows) + 2
    assert {ls["partition"] for n, ls, _ in samples(after) if n == "netfraud_consumer_lag"} == {
        "0",
        "1",
        "2",
    }
    addresses = [v for _, ls, _ in samples(after) for v in ls.values() if ADDRESS.search(v)]
    assert not addresses, addresses
    assert code == 0


def _ready(port: int) -> bool:
    try:
        return _probe(port, "/readyz")[0] == 200
    except OSError:
        return False
