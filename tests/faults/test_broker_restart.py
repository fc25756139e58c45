"""The broker goes away mid-stream and comes back on the same port and data dir."""

from __future__ import annotations

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
    create_topics,
    read_messages,
    replay_on,
    summaries,
    unique,
)
from helpers import wait_until

pytestmark = pytest.mark.integration
DOWN_S = 15.0


def test_broker_restart_mid_stream_loses_nothing(
    private_broker: Callable[..., Any],
    replayed_stream: Stream,
    model_registry: Path,
    tmp_path: Path,
) -> None:
    """Serve retries with backoff while the broker is down, says so in its log,
    and resumes when it is back; every expected alert arrives."""
    broker = private_broker()
    topic = replay_on(broker.bootstrap, replayed_stream)
    alerts, dead = unique("restart-alerts"), unique("restart-dlq")
    create_topics(broker.bootstrap, {alerts: 1, dead: 1})
    env = {"NETFRAUD_PRODUCER__FLUSH_TIMEOUT_S": "3"}
    group = unique("restart")
    server = Server(broker.bootstrap, topic, model_registry, group, alerts, dead, tmp_path / "s")
    server.env = env
    offsets = Offsets(broker.bootstrap)

    server.start()
    assert wait_until(lambda: offsets.progress(group, topic) > replayed_stream.records // 4, 300)
    offsets.close()
    before = time.monotonic()
    broker.stop()
    time.sleep(DOWN_S)
    broker.start(timeout=120)
    back = time.monotonic()
    caught_up = wait_until(lambda: all_committed(broker.bootstrap, group, topic), 300, 1.0)
    resumed_after = round(time.monotonic() - back, 1)
    code = server.stop()

    log = server.text()
    seen = alert_keys(read_messages(broker.bootstrap, alerts))
    warnings = [e["event"] for e in summaries(log, "batch_not_delivered")]
    figures = Figures(
        "broker-restart",
        replayed_stream.records,
        set(replayed_stream.expected),
        seen,
        {
            "down_s": round(back - before, 1),
            "caught_up_s_after_restart": resumed_after,
            "batch_not_delivered": len(warnings),
            "broker_unreachable": log.count('"broker_unreachable"'),
            "consumer_paused": log.count('"consumer_paused"'),
            "exit_code": code,
        },
    ).show()
    assert caught_up, server.tail()
    assert code == 0, server.tail()
    assert figures.extra["batch_not_delivered"] or '"broker_unreachable"' in log, server.tail()
    assert '"broker_unreachable"' not in log or '"broker_reachable"' in log
    assert not figures.lost, sorted(figures.lost)[:20]
