"""netfraud serve --workers 2 against a real broker: one group, two processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import caught_up, produce_file, serve, wait_until

pytestmark = pytest.mark.integration
TIMEOUT_S = 300


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{event}"' in line and line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_two_workers_consume_the_topic_and_exit_zero(
    kafka_broker: Any,
    topic_factory: Any,
    model_registry: Path,
    demo_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Both workers run and stop by themselves; every offset is committed."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("flows", 4), topic_factory("alerts"), topic_factory("dlq")
    rows = produce_file(bootstrap, topic, demo_data["stream"])
    group, log = f"g-{topic}", tmp_path / "serve.log"

    proc = serve(
        bootstrap,
        topic,
        model_registry,
        group,
        alerts,
        dead,
        "--workers",
        "2",
        "--stop-after-idle",
        "5",
        log=log,
    )
    assert proc.wait(TIMEOUT_S) == 0, log.read_text()[-4000:]

    summaries = _events(log, "final_summary")
    assert sorted(s["worker"] for s in summaries) == [0, 1]
    assert sum(s["scored"] for s in summaries) >= len(rows)
    assert caught_up(bootstrap, group, topic)


def test_sigterm_is_forwarded_to_every_worker(
    kafka_broker: Any,
    topic_factory: Any,
    model_registry: Path,
    demo_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    """SIGTERM to the parent stops both workers cleanly: exit code 0."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("flows", 4), topic_factory("alerts"), topic_factory("dlq")
    produce_file(bootstrap, topic, demo_data["stream"])
    group, log = f"g-{topic}", tmp_path / "serve.log"
    proc = serve(bootstrap, topic, model_registry, group, alerts, dead, "--workers", "2", log=log)

    assert wait_until(lambda: caught_up(bootstrap, group, topic), TIMEOUT_S)
    assert wait_until(lambda: len(_events(log, "serving")) == 2, TIMEOUT_S)
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(60) == 0, log.read_text()[-4000:]
    assert sorted(e["worker"] for e in _events(log, "stopped")) == [0, 1]
