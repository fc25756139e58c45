"""Helpers for tests that drive netfraud against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(relative: str) -> Path:
    """A file under ../shared; skip without it, except under CI=true (fail)."""
    path = SHARED / relative
    if not path.exists():
        reason = f"{path} not found: the shared datasets sit beside the checkout"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true, so this fails instead of skipping)")
        pytest.skip(reason)
    return path


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines; return the path."""
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def produce(bootstrap: str, topic: str, values: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send (key, value) pairs and wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    n = 0
    for key, value in values:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


def produce_file(bootstrap: str, topic: str, path: Path) -> list[dict[str, Any]]:
    """Send a JSON-lines file keyed by source address; return its rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    produce(bootstrap, topic, ((r["src_ip"].encode(), json.dumps(r).encode()) for r in rows))
    return rows


def read_all(
    bootstrap: str, topic: str, idle_ms: int = 4_000, isolation: str = "read_uncommitted"
) -> list[Any]:
    """Every message of a topic (until ``idle_ms`` without a new one); with
    ``isolation="read_committed"``, only those of committed transactions."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
        isolation_level=isolation,
    )
    messages = list(consumer)
    consumer.close()
    return messages


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Committed offset per partition of ``topic`` for ``group``."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """End offset of each partition of ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def serve(
    bootstrap: str,
    topic: str,
    registry: Path,
    group: str,
    alerts: str,
    dead: str,
    *extra: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``netfraud serve`` as a subprocess (JSON logs to its stderr, or
    appended to ``log``: a long run must not fill an unread pipe)."""
    command = [
        sys.executable,
        "-m",
        "detector.cli",
        "serve",
        "--bootstrap-servers",
        bootstrap,
        "--topics",
        topic,
        "--model-dir",
        str(registry),
        "--group",
        group,
        "--alerts-topic",
        alerts,
        "--dead-letter-topic",
        dead,
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        *extra,
    ]
    environment = dict(os.environ, **(env or {}))
    environment.pop("NETFRAUD_CONFIG", None)
    if log is None:
        return subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    with log.open("ab") as sink:
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=sink, stderr=sink)


def wait_until(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed the end of every partition of ``topic``."""
    ends = end_offsets(bootstrap, topic)
    done = committed(bootstrap, group, topic)
    return all(done.get(p, 0) >= end for p, end in ends.items())


def provenance(alerts: Iterable[Any]) -> set[tuple[int, int]]:
    """(partition, offset) of the input record of each alert message."""
    out = set()
    for message in alerts:
        p = json.loads(message.value)["netfraud"]["provenance"]
        out.add((p["partition"], p["offset"]))
    return out
