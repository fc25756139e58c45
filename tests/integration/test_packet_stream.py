"""Packets end to end: a capture replayed through Kafka and scored by ``netfraud serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import ROOT, caught_up, committed, end_offsets, read_all, serve, shared_path

from detector.stream.alerts import SCHEMA_PATH
from detector.tools.pcap import CaptureCounts, read_packets

pytestmark = pytest.mark.integration
TIMEOUT_S = 300
TRAIN = "datasets/slips-pcaps/test-cc/test-cc-capture-1.pcap"
STREAM = "datasets/slips-pcaps/test19-malicious-ssh/malicious-ssh-bruteforce.pcap"


def _netfraud(*args: str) -> str:
    """Run a netfraud command to completion; return its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "detector.cli", *args, "--log-format", "json"],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode()


def _final_summary(log: str) -> dict[str, Any]:
    for line in log.splitlines():
        if '"final_summary"' in line:
            return json.loads(line)  # type: ignore[no-any-return]
    raise AssertionError("serve logged no final_summary:\n" + log[-3000:])


def test_a_replayed_capture_is_scored_packet_by_packet(
    kafka_broker: Any, topic_factory: Any, tmp_path: Path
) -> None:
    """Each packet of a replayed capture is scored once; alerts match the schema."""
    bootstrap = kafka_broker.bootstrap
    train, stream = shared_path(TRAIN), shared_path(STREAM)
    registry = tmp_path / "models"
    _netfraud("train", "--data", str(train), "--model-dir", str(registry), "--epochs", "8")
    topic, alerts, dead = topic_factory("packets", 3), topic_factory("alerts"), topic_factory("dlq")
    counts = CaptureCounts()
    expected = list(read_packets(stream, counts))

    printed = _netfraud(
        "replay", "--pcap", str(stream), "--topic", topic, "--bootstrap-servers", bootstrap
    )
    group = f"g-{topic}"
    proc = serve(
        bootstrap,
        topic,
        registry,
        group,
        alerts,
        dead,
        "--format",
        "packet",
        "--stop-after-idle",
        "5",
    )
    _, err = proc.communicate(timeout=TIMEOUT_S)

    log = err.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    assert f"published {counts.packets} packet records" in printed
    summary = _final_summary(log)
    assert summary["scored"] == summary["records"] == len(expected) == 1178
    assert summary["dead_letters"] == 0
    assert caught_up(bootstrap, group, topic), (
        committed(bootstrap, group, topic),
        end_offsets(bootstrap, topic),
    )
    schema = json.loads(SCHEMA_PATH.read_text())
    addresses = {p[1] for p in expected}
    messages = read_all(bootstrap, alerts)
    for message in messages:
        document = json.loads(message.value)
        jsonschema.validate(document, schema)
        assert document["netfraud"]["provenance"]["format"] == "packet"
        assert document["source"]["ip"] in addresses
    print(f"packets={len(expected)} alerts={len(messages)} scored={summary['scored']}")
