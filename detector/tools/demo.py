"""``netfraud demo``: the whole path on synthetic traffic, with a report.

Generates a day of normal traffic and trains on it, generates a stream with
attacks, replays it to Kafka, runs ``netfraud serve`` on it as a separate
process, then reads the alerts back and scores them against the generator's
labels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table

from detector.settings import Settings
from detector.stream.alerts import format_value
from detector.stream.kafka_python import connection_config
from detector.tools.generate import DEFAULT_START, generate
from detector.tools.replay import ensure_topic, json_lines, publish

console = Console(stderr=False)
TRAIN_RECORDS = 60_000


def run_demo(settings: Settings, workdir: Path, records: int) -> int:
    """Run the demo against the broker in ``settings``; write ``summary.json``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    run = time.strftime("%Y%m%d%H%M%S")
    topic, alerts_topic = f"demo.flows.{run}", f"demo.alerts.{run}"

    console.rule("netfraud demo")
    train_file, stream_file = workdir / "train.jsonl", workdir / "stream.jsonl"
    _write(train_file, generate(TRAIN_RECORDS, seed=1, attacks=False, hours=24))
    # The stream keeps the training day's traffic rate, so that normal hosts
    # look as busy as they did in training.
    hours = 24 * records / TRAIN_RECORDS
    stream = generate(records, seed=2, attacks=True, start=DEFAULT_START + 86_400, hours=hours)
    _write(stream_file, stream)
    console.print(
        f"generated {train_file} (60,000 normal flows) and {stream_file} "
        f"({len(stream):,} flows, {sum(r['label'] == 'attack' for r in stream):,} attack)"
    )

    models = workdir / "models"
    _netfraud(["train", "--data", str(train_file), "--model-dir", str(models)], settings)
    ensure_topic(settings, topic, 3)
    publish(settings, topic, json_lines(stream_file), len(stream))
    console.print(f"replayed {len(stream):,} flows to {topic}")

    log = workdir / "serve.log"
    _netfraud(
        [
            "serve",
            "--topics",
            topic,
            "--alerts-topic",
            alerts_topic,
            "--model-dir",
            str(models),
            "--group",
            f"demo-{run}",
            "--metrics-port",
            "0",
            "--stop-after-idle",
            "4",
            "--log-format",
            "json",
            "--dead-letter-topic",
            f"demo.dead-letters.{run}",
            "--archive-dir",
            str(workdir / "archive"),
        ],
        settings,
        log,
    )
    busy = _busy_seconds(log)
    alerts = [value for _, _, value in read_topic(settings, alerts_topic)]
    summary = score_alerts(read_topic(settings, topic), alerts, busy)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    _write_settings(workdir)
    _report(summary, alerts)
    return 0


def _write_settings(workdir: Path) -> None:
    """Leave ``netfraud.toml`` naming the demo's registry and archive, for retraining."""
    root = workdir.resolve()
    (workdir / "netfraud.toml").write_text(
        "# Written by `netfraud demo`. Retrain its model on the archived stream with\n"
        f"#   netfraud retrain --config {root / 'netfraud.toml'}   (or: make retrain)\n"
        f'[model]\nregistry = "{root / "models"}"\n\n'
        f'[archive]\npath = "{root / "archive"}"\n'
    )


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")


def _netfraud(args: list[str], settings: Settings, log: Path | None = None) -> None:
    env = dict(os.environ, NETFRAUD_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers)
    command = [sys.executable, "-m", "detector.cli", *args]
    with log.open("w") if log else open(os.devnull, "w") as err:
        done = subprocess.run(command, env=env, stderr=err if log else None, check=False)
    if done.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"`netfraud {args[0]}` failed with exit code {done.returncode}\n{tail}")


def _busy_seconds(log: Path) -> float | None:
    for line in log.read_text().splitlines():
        if '"final_summary"' in line:
            return float(json.loads(line)["busy_seconds"])
    return None


def read_topic(
    settings: Settings, topic: str, timeout_s: float = 10.0
) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, JSON value) of every message, read to the topic's end."""
    consumer = KafkaConsumer(
        topic,
        **connection_config(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    out = [(m.partition, m.offset, json.loads(m.value)) for m in consumer]
    consumer.close()
    return out


def score_alerts(
    inputs: list[tuple[int, int, dict[str, Any]]],
    alerts: list[dict[str, Any]],
    busy: float | None,
) -> dict[str, Any]:
    """Detection and false-positive rates of alerts against the input's labels.

    Each alert names the partition and offset of the record it is about, so
    it is matched to the labelled input record exactly.
    """
    flagged = {
        (a["netfraud"]["provenance"]["partition"], a["netfraud"]["provenance"]["offset"])
        for a in alerts
    }
    attacks = [(p, o, r) for p, o, r in inputs if r["label"] == "attack"]
    benign = [(p, o, r) for p, o, r in inputs if r["label"] != "attack"]
    hit = [r for p, o, r in attacks if (p, o) in flagged]
    false = [r for p, o, r in benign if (p, o) in flagged]
    by_type = Counter(r["attack_type"] for _, _, r in attacks)
    hit_type = Counter(r["attack_type"] for r in hit)
    return {
        "records": len(inputs),
        "alerts": len(alerts),
        "attacks": len(attacks),
        "detection_rate": round(len(hit) / max(len(attacks), 1), 4),
        "false_positive_rate": round(len(false) / max(len(benign), 1), 4),
        "records_per_second": round(len(inputs) / busy, 1) if busy else None,
        "detection_by_attack_type": {
            k: round(hit_type[k] / v, 4) for k, v in sorted(by_type.items())
        },
    }


def _report(summary: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
    table = Table(title="netfraud demo summary", show_header=False)
    for key in (
        "records",
        "attacks",
        "alerts",
        "detection_rate",
        "false_positive_rate",
        "records_per_second",
    ):
        table.add_row(key.replace("_", " "), str(summary[key]))
    for kind, rate in summary["detection_by_attack_type"].items():
        table.add_row(f"  detected: {kind}", f"{rate:.1%}")
    console.print(table)

    # One row per (source, destination) pair, so a flood does not fill the table.
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in alerts:
        pairs.setdefault((a["source"]["ip"], a["destination"]["ip"]), []).append(a)
    ranked = sorted(
        pairs.values(), key=lambda g: (-max(a["event"]["risk_score"] for a in g), -len(g))
    )
    view = Table(title="top alerts, one row per source → destination")
    for column in ("first seen", "severity", "source → destination", "alerts", "risk", "why"):
        view.add_column(column)
    for group in ranked[:10]:
        a = max(group, key=lambda x: x["event"]["risk_score"])
        n = a["netfraud"]
        why = "; ".join(
            f"{r['label']}: {format_value(r['observed'])} (expected {format_value(r['expected'])})"
            for r in n["reasons"][:2]
        )
        view.add_row(
            min(x["@timestamp"] for x in group)[11:19],
            n["severity"],
            f"{a['source']['ip']} → {a['destination']['ip']}:{a['destination'].get('port', '')}",
            str(len(group)),
            f"{a['event']['risk_score']:.0f}",
            why,
        )
    console.print(view)
