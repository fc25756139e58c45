"""SIGKILL at seeded points: at-least-once loses nothing, exactly-once also duplicates nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import (
    Figures,
    Server,
    Stream,
    alert_keys,
    all_committed,
    create_topics,
    kill_points,
    read_messages,
    run_with_kills,
    unique,
)

pytestmark = pytest.mark.integration
KILLS = 5


def _server(stream: Stream, registry: Path, log: Path, *args: str) -> Server:
    alerts, dead = unique("kill-alerts"), unique("kill-dlq")
    create_topics(stream.bootstrap, {alerts: 1, dead: 1})
    return Server(stream.bootstrap, stream.topic, registry, unique("kill"), alerts, dead, log, args)


def test_sigkill_at_five_seeded_points_loses_no_alert(
    replayed_stream: Stream, model_registry: Path, tmp_path: Path
) -> None:
    """At-least-once: after 5 SIGKILLs and restarts, every offset is committed
    and every alert of the clean run is published at least once."""
    server = _server(replayed_stream, model_registry, tmp_path / "serve.log")

    kills = run_with_kills(
        server, replayed_stream.records, kill_points(seed=7, count=KILLS), seed=7
    )

    seen = alert_keys(read_messages(server.bootstrap, server.alerts))
    figures = Figures(
        "kill/at-least-once", replayed_stream.records, set(replayed_stream.expected), seen, kills
    ).show()
    assert all_committed(server.bootstrap, server.group, server.topic)
    assert kills["kills"] == KILLS
    assert not figures.lost, sorted(figures.lost)[:20]


def test_exactly_once_sigkill_neither_loses_nor_duplicates(
    replayed_stream: Stream, model_registry: Path, tmp_path: Path
) -> None:
    """Exactly-once: a read_committed reader of the alerts sees each expected
    alert once across 5 SIGKILLs; aborted transactions stay invisible to it."""
    server = _server(
        replayed_stream, model_registry, tmp_path / "serve.log", "--delivery", "exactly-once"
    )

    kills = run_with_kills(
        server,
        replayed_stream.records,
        kill_points(seed=8, count=KILLS),
        seed=8,
        mid_transaction=True,
    )

    committed_view = read_messages(server.bootstrap, server.alerts, committed_only=True)
    raw_view: list[Any] = read_messages(server.bootstrap, server.alerts)
    figures = Figures(
        "kill/exactly-once",
        replayed_stream.records,
        set(replayed_stream.expected),
        alert_keys(committed_view),
        {**kills, "aborted_alerts_in_log": len(raw_view) - len(committed_view)},
    ).show()
    assert all_committed(server.bootstrap, server.group, server.topic)
    assert '"transactions_ready"' in server.text()
    assert figures.duplicates == 0
    assert not figures.lost, sorted(figures.lost)[:20]
    assert not figures.unexpected, sorted(figures.unexpected)[:20]
