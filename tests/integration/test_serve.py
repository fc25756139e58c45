"""netfraud serve against a real broker: alerts, dead letters, crashes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import (
    caught_up,
    committed,
    end_offsets,
    produce,
    produce_file,
    provenance,
    read_all,
    serve,
    wait_until,
)

from detector.stream.alerts import SCHEMA_PATH

pytestmark = pytest.mark.integration
SERVE_TIMEOUT_S = 300


@pytest.fixture(autouse=True, params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every scenario runs with each Kafka client (serve reads NETFRAUD_KAFKA__CLIENT)."""
    monkeypatch.setenv("NETFRAUD_KAFKA__CLIENT", request.param)
    return str(request.param)


def _finish(proc: Any, timeout: float = SERVE_TIMEOUT_S) -> str:
    """Wait for a serve process to exit by itself; return its log."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except Exception:
        proc.kill()
        _, err = proc.communicate()
        raise
    log = err.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    return log


def _final_summary(log: str) -> dict[str, Any]:
    for line in log.splitlines():
        if '"final_summary"' in line:
            return json.loads(line)  # type: ignore[no-any-return]
    raise AssertionError("serve logged no final_summary:\n" + log[-3000:])


def _labels(bootstrap: str, topic: str) -> dict[tuple[int, int], str]:
    return {
        (m.partition, m.offset): json.loads(m.value)["label"] for m in read_all(bootstrap, topic)
    }


def test_alerts_arrive_valid_and_mostly_attacks(
    kafka_broker: Any, topic_factory: Any, model_registry: Path, demo_data: dict[str, Path]
) -> None:
    """Alerts match the schema, are mostly attacks, and every offset is committed."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("flows", 3), topic_factory("alerts"), topic_factory("dlq")
    rows = produce_file(bootstrap, topic, demo_data["stream"])
    group = f"g-{topic}"

    log = _finish(
        serve(bootstrap, topic, model_registry, group, alerts, dead, "--stop-after-idle", "5")
    )

    assert caught_up(bootstrap, group, topic), (
        committed(bootstrap, group, topic),
        end_offsets(bootstrap, topic),
    )
    schema = json.loads(SCHEMA_PATH.read_text())
    messages = read_all(bootstrap, alerts)
    for message in messages:
        jsonschema.validate(json.loads(message.value), schema)
    labels = _labels(bootstrap, topic)
    flagged = provenance(messages)
    attacks = {k for k, v in labels.items() if v == "attack"}
    precision = len(flagged & attacks) / max(len(flagged), 1)
    recall = len(flagged & attacks) / len(attacks)
    print(
        f"records={len(rows)} attacks={len(attacks)} alerts={len(messages)} "
        f"precision={precision:.3f} recall={recall:.3f}"
    )
    assert _final_summary(log)["scored"] == len(rows)
    assert recall >= 0.9
    assert precision >= 0.5


def test_bad_records_go_to_dead_letters_and_the_rest_is_scored(
    kafka_broker: Any, topic_factory: Any, model_registry: Path, demo_data: dict[str, Path]
) -> None:
    """Malformed JSON, a missing field and a wrong type are dead-lettered with reasons."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("flows"), topic_factory("alerts"), topic_factory("dlq")
    good = [line.encode() for line in demo_data["stream"].read_text().splitlines()[:300]]
    bad = {
        b'{"ts": 1767657600, "src_ip": "10.0.0.1", broken': "not valid JSON",
        b'{"ts": 1767657600, "dst_ip": "10.0.0.2", "proto": "tcp"}': "src_ip",
        b'{"ts": 1767657600, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": "tcp", '
        b'"src_port": "http"}': "src_port",
    }
    first, *rest = list(bad)
    values = [*good[:100], first, *good[100:200], *rest, *good[200:]]
    produce(bootstrap, topic, ((None, v) for v in values))
    group = f"g-{topic}"

    log = _finish(
        serve(bootstrap, topic, model_registry, group, alerts, dead, "--stop-after-idle", "5")
    )

    letters = read_all(bootstrap, dead)
    assert sorted(m.value for m in letters) == sorted(bad)
    for message in letters:
        headers = dict(message.headers)
        reason = headers["netfraud.error.reason"].decode()
        assert bad[message.value] in reason, reason
        assert headers["netfraud.origin.topic"].decode() == topic
        assert int(headers["netfraud.origin.offset"]) == values.index(message.value)
    summary = _final_summary(log)
    assert summary["scored"] == len(good)
    assert summary["dead_letters"] == len(bad)
    assert caught_up(bootstrap, group, topic)


def test_sigterm_finishes_the_batch_commits_and_exits_zero(
    kafka_broker: Any, topic_factory: Any, model_registry: Path, demo_data: dict[str, Path]
) -> None:
    """SIGTERM stops serve cleanly: exit code 0 and offsets committed."""
    bootstrap = kafka_broker.bootstrap
    topic, alerts, dead = topic_factory("flows", 3), topic_factory("alerts"), topic_factory("dlq")
    produce_file(bootstrap, topic, demo_data["stream"])
    group = f"g-{topic}"
    proc = serve(bootstrap, topic, model_registry, group, alerts, dead)

    assert wait_until(lambda: caught_up(bootstrap, group, topic), SERVE_TIMEOUT_S)
    proc.send_signal(signal.SIGTERM)
    log = _finish(proc, 60)

    assert '"stopping"' in log and '"stopped"' in log


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_sigkill_mid_stream_loses_no_alert(
    kafka_broker: Any,
    topic_factory: Any,
    model_registry: Path,
    demo_data: dict[str, Path],
    delivery: str,
) -> None:
    """After SIGKILL and restart, every alert of a clean run is raised at least
    once; exactly once, for a read_committed reader, under exactly-once delivery."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory("flows", 3)
    rows = produce_file(bootstrap, topic, demo_data["stream"])
    clean_alerts, crash_alerts = topic_factory("alerts-clean"), topic_factory("alerts-crash")
    dead = topic_factory("dlq")

    _finish(
        serve(
            bootstrap,
            topic,
            model_registry,
            f"clean-{topic}",
            clean_alerts,
            dead,
            "--stop-after-idle",
            "5",
        )
    )
    group = f"crash-{topic}"
    kills = 0
    for fraction in (0.25, 0.6):
        proc = serve(
            bootstrap,
            topic,
            model_registry,
            group,
            crash_alerts,
            dead,
            "--log-level",
            "warning",
            "--delivery",
            delivery,
        )
        target = fraction * len(rows)
        wait_until(
            lambda target=target: sum(committed(bootstrap, group, topic).values()) >= target,
            SERVE_TIMEOUT_S,
            0.2,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    _finish(
        serve(
            bootstrap,
            topic,
            model_registry,
            group,
            crash_alerts,
            dead,
            "--stop-after-idle",
            "5",
            "--delivery",
            delivery,
        )
    )

    expected = provenance(read_all(bootstrap, clean_alerts))
    exactly_once = delivery == "exactly-once"
    seen_messages = read_all(
        bootstrap, crash_alerts, isolation="read_committed" if exactly_once else "read_uncommitted"
    )
    seen = provenance(seen_messages)
    lost = expected - seen
    print(
        f"records={len(rows)} kills={kills} alerts_expected={len(expected)} "
        f"alerts_seen={len(seen_messages)} distinct={len(seen)} "
        f"duplicates={len(seen_messages) - len(seen)} lost={len(lost)}"
    )
    assert caught_up(bootstrap, group, topic)
    assert not lost
    if exactly_once:
        assert len(seen_messages) == len(seen), "a committed alert was published twice"
