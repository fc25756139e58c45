"""The analyst's side against a real broker: alerts shown and filtered, feedback
that suppresses an alert on a replay, and the suppression's expiry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, produce_file, serve
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition

from detector.settings import load_settings
from detector.stream.suppressions import alert_features, make_rule
from detector.tools.alerts_cli import SEVERITIES

pytestmark = pytest.mark.integration
SERVE_TIMEOUT_S = 180
CLI_TIMEOUT_S = 60


@dataclass
class Served:
    """One serve run over the demo stream, and the topics it used."""

    bootstrap: str
    registry: Path
    flows: str
    feedback: str
    dead: str
    alerts: str
    documents: list[dict[str, Any]]
    records: int


def _create_topics(bootstrap: str, **configs: dict[str, str]) -> dict[str, str]:
    names = {role: f"analyst-{role}-{uuid.uuid4().hex[:10]}" for role in configs}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {
                names[role]: {"num_partitions": 1, "replication_factor": 1, "configs": config}
                for role, config in configs.items()
            }
        )
        admin.wait_for_topics(list(names.values()), timeout_ms=30_000)
    finally:
        admin.close()
    return names


def _serve_run(run: Served, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Serve the flows topic in a new group to a new alerts topic; return alerts and summary."""
    alerts = _create_topics(run.bootstrap, alerts={})["alerts"]
    started = time.monotonic()
    proc = serve(
        run.bootstrap,
        run.flows,
        run.registry,
        f"{name}-{alerts}",
        alerts,
        run.dead,
        "--feedback-topic",
        run.feedback,
        "--stop-after-idle",
        "3",
    )
    try:
        _, err = proc.communicate(timeout=SERVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    log = err.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    summary = next(json.loads(x) for x in log.splitlines() if '"final_summary"' in x)
    print(f"serve run {name}: {time.monotonic() - started:.1f} s")
    documents = [json.loads(value) for value in _topic_values(run.bootstrap, alerts)]
    return documents, summary | {"alerts_topic": alerts}


def _topic_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value of a one-partition topic, up to its end offset."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        values: list[bytes] = []
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=1_000).values():
                values += [r.value for r in records if r.offset < end]
        return values
    finally:
        consumer.close()


def _netfraud(run: Served, *args: str) -> str:
    """Run a netfraud command against the run's broker; return its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "detector.cli", *args, "--bootstrap-servers", run.bootstrap],
        cwd=ROOT,
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode()


def _shown(run: Served, *flags: str) -> list[dict[str, Any]]:
    out = _netfraud(
        run,
        "alerts",
        "--json",
        "--no-follow",
        "--from-beginning",
        "--alerts-topic",
        run.alerts,
        *flags,
    )
    return [json.loads(line) for line in out.splitlines() if line]


def _ids(documents: list[dict[str, Any]]) -> list[str]:
    return [d["event"]["id"] for d in documents]


@pytest.fixture(scope="module")
def served(kafka_broker: Any, model_registry: Path, demo_data: dict[str, Path]) -> Iterator[Served]:
    """The demo stream served once, with an empty compacted feedback topic."""
    bootstrap = kafka_broker.bootstrap
    topics = _create_topics(bootstrap, flows={}, dead={}, feedback={"cleanup.policy": "compact"})
    rows = produce_file(bootstrap, topics["flows"], demo_data["stream"])
    run = Served(
        bootstrap,
        model_registry,
        topics["flows"],
        topics["feedback"],
        topics["dead"],
        "",
        [],
        len(rows),
    )
    run.documents, summary = _serve_run(run, "first")
    run.alerts = summary["alerts_topic"]
    print(f"records={len(rows)} alerts={len(run.documents)}")
    assert run.documents
    yield run


def test_every_alert_is_shown_as_json(served: Served) -> None:
    """--json --no-follow --from-beginning prints the topic's alerts, unchanged and in order."""
    shown = _shown(served)
    print(f"alerts on topic={len(served.documents)} shown={len(shown)}")
    assert shown == served.documents


def test_the_severity_filter_keeps_that_severity_and_above(served: Served) -> None:
    """--severity high shows exactly the topic's high and critical alerts."""
    shown = _shown(served, "--severity", "high")
    expected = [
        d
        for d in served.documents
        if SEVERITIES.index(d["netfraud"]["severity"]) >= SEVERITIES.index("high")
    ]
    print(f"severity>=high: topic={len(expected)} shown={len(shown)} of {len(served.documents)}")
    assert _ids(shown) == _ids(expected)
    assert 0 < len(shown) < len(served.documents)


def test_the_host_filter_matches_either_end(served: Served) -> None:
    """--host shows exactly the alerts with that source or destination address."""
    sources = [d["source"]["ip"] for d in served.documents]
    host = max(set(sources), key=sources.count)
    shown = _shown(served, "--host", host)
    expected = [d for d in served.documents if host in (d["source"]["ip"], d["destination"]["ip"])]
    print(f"host={host}: topic={len(expected)} shown={len(shown)}")
    assert _ids(shown) == _ids(expected)
    assert _shown(served, "--host", host, "--max", "2") == expected[:2]


def test_following_stops_after_max_and_the_table_reads_in_words(served: Served) -> None:
    """--follow with --max exits after N alerts; the table shows flows and reasons, uncoloured."""
    follow = _netfraud(
        served,
        "alerts",
        "--json",
        "--from-beginning",
        "--max",
        "3",
        "--alerts-topic",
        served.alerts,
    )
    assert [json.loads(line) for line in follow.splitlines()] == served.documents[:3]

    table = _netfraud(
        served,
        "alerts",
        "--from-beginning",
        "--no-follow",
        "--max",
        "1",
        "--alerts-topic",
        served.alerts,
    )
    first = served.documents[0]
    assert "\x1b[" not in table
    assert first["source"]["ip"] in table and first["event"]["id"][:12] in table
    assert first["netfraud"]["reasons"][0]["label"].split()[0] in table


def test_a_closed_pipe_ends_the_listing_quietly(served: Served) -> None:
    """`netfraud alerts --json | head -n 1` exits 0 without a traceback."""
    command = (
        f"set -o pipefail; {sys.executable} -m detector.cli alerts --json --from-beginning "
        f"--no-follow --alerts-topic {served.alerts} --bootstrap-servers {served.bootstrap} "
        "| head -n 1"
    )
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, timeout=CLI_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"Traceback" not in done.stderr
    assert json.loads(done.stdout) == served.documents[0]


def _narrowest(documents: list[dict[str, Any]]) -> tuple[dict[str, Any], set[str]]:
    """The alert whose host-port rule would match the fewest alerts, and those alerts."""
    best: tuple[dict[str, Any], set[str]] | None = None
    for document in documents:
        rule = make_rule(document, "host-port", 0.0, 1.0)
        matched = {
            d["event"]["id"]
            for d in documents
            if rule.matches(d["source"]["ip"], d["destination"].get("port"), alert_features(d))
        }
        if best is None or len(matched) < len(best[1]):
            best = (document, matched)
    assert best is not None
    return best


def test_a_false_positive_is_suppressed_on_replay_until_it_expires(served: Served) -> None:
    """A false-positive verdict withholds its alert on a replay; once expired, it alerts again."""
    target, matched = _narrowest(served.documents)
    event_id = target["event"]["id"]
    everything = set(_ids(served.documents))

    out = _netfraud(
        served,
        "feedback",
        event_id[:12],
        "--verdict",
        "false-positive",
        "--note",
        "nightly backup",
        "--alerts-topic",
        served.alerts,
        "--feedback-topic",
        served.feedback,
    )
    assert "suppressing" in out
    listed = _netfraud(
        served, "suppressions", "list", "--json", "--feedback-topic", served.feedback
    )
    assert [json.loads(line)["id"] for line in listed.splitlines()] == [event_id]

    replay, summary = _serve_run(served, "replay")
    replayed = set(_ids(replay))
    print(
        f"replay: alerts={len(replay)} suppressed={summary['suppressed']} "
        f"rule matched={len(matched)} of {len(everything)}"
    )
    assert event_id not in replayed
    assert replayed == everything - matched
    assert summary["suppressed"] == len(matched)

    _netfraud(
        served,
        "feedback",
        event_id,
        "--verdict",
        "false-positive",
        "--expires",
        "2s",
        "--alerts-topic",
        served.alerts,
        "--feedback-topic",
        served.feedback,
    )
    time.sleep(2.5)
    again, summary = _serve_run(served, "expired")
    print(f"after expiry: alerts={len(again)} suppressed={summary['suppressed']}")
    assert event_id in set(_ids(again))
    assert set(_ids(again)) == everything
    assert summary["suppressed"] == 0


def test_confirmed_benign_records_are_readable_for_retraining(served: Served) -> None:
    """A false positive keeps its input record, in canonical fields, for retraining."""
    from detector.stream.suppressions import confirmed_benign, epoch_of

    target = served.documents[-1]
    feedback = f"analyst-feedback-new-{uuid.uuid4().hex[:10]}"  # created by the command
    _netfraud(
        served,
        "feedback",
        target["event"]["id"],
        "--verdict",
        "false-positive",
        "--alerts-topic",
        served.alerts,
        "--feedback-topic",
        feedback,
    )
    settings = load_settings(
        overrides={"kafka.bootstrap_servers": served.bootstrap, "topics.feedback": feedback},
        environ={},
    )

    [record] = confirmed_benign(settings)
    assert abs(record["ts"] - epoch_of(target["@timestamp"])) < 1e-3
    assert record["src_ip"] == target["source"]["ip"]
    assert record["dst_ip"] == target["destination"]["ip"]
    assert record["dst_port"] == target["destination"].get("port")


def test_serve_side_suppressions_start_without_a_topic_and_follow_it(kafka_broker: Any) -> None:
    """A missing feedback topic is no wait; rules written later take effect while serving."""
    from helpers import produce, wait_until

    from detector.stream.suppressions import Suppressions

    bootstrap = kafka_broker.bootstrap
    feedback = f"analyst-feedback-late-{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        overrides={"kafka.bootstrap_servers": bootstrap, "topics.feedback": feedback}, environ={}
    )
    alert = {
        "event": {"id": "ab" * 16},
        "source": {"ip": "10.1.1.1"},
        "destination": {"ip": "10.2.2.2", "port": 443},
        "netfraud": {"reasons": [{"name": "dst_bytes"}]},
    }
    rule = make_rule(alert, "host-port", time.time(), 3_600.0)
    suppressions = Suppressions().start(settings)
    try:
        assert suppressions.wait_ready(10.0)
        assert suppressions([alert]).tolist() == [False]

        record = {"event_id": rule.id, "verdict": "false-positive", "rule": rule.to_dict()}
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics({feedback: {"num_partitions": 1, "replication_factor": 1}})
        admin.close()
        produce(bootstrap, feedback, [(rule.id.encode(), json.dumps(record).encode())])

        assert wait_until(lambda: suppressions([alert]).tolist() == [True], 20.0, 0.2)
    finally:
        suppressions.stop()
