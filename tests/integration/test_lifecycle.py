"""The model lifecycle against a real broker: retrain, gate, hot swap, refusal."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kafka.errors
import numpy as np
import pandas as pd
import pytest
from helpers import (
    ROOT,
    caught_up,
    committed,
    end_offsets,
    read_all,
    serve,
    wait_until,
    write_jsonl,
)
from kafka import KafkaProducer

from detector.lifecycle.retrain import EXIT_KEPT, EXIT_PROMOTED, read_topic_range
from detector.model.registry import Registry
from detector.settings import load_settings
from detector.stream.archive import ArchiveWriter, read_archive
from detector.tools.generate import DEFAULT_START, generate
from features.formats.netfraud import frame_to_batch

pytestmark = pytest.mark.integration
DAY = 86_400.0
#: Start of the "shifted" traffic: two days after the champion's training day.
SHIFTED_START = DEFAULT_START + 2 * DAY


class LogWatch:
    """Reads a serve process's JSON log lines as they come."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    def wait_for(self, name: str, timeout: float) -> dict[str, Any]:
        assert wait_until(lambda: self.events(name), timeout, 0.2), self.tail()
        return self.events(name)[0]

    def stop(self, timeout: float = 60) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        self._thread.join(5)
        assert self.proc.returncode == 0, self.tail()

    def tail(self) -> str:
        return "".join(self.lines[-40:])


def _caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """caught_up, and False while the broker has no group coordinator yet (first use)."""
    try:
        return caught_up(bootstrap, group, topic)
    except kafka.errors.KafkaError:
        return False


def _copy_registry(source: Path, target: Path) -> Registry:
    """A private copy of the session's registry (promotions must not leak out)."""
    shutil.copytree(source, target)
    return Registry(target)


def _shifted(rows: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    """Traffic whose transfers are ``factor`` times larger than in training."""
    out = []
    for row in rows:
        row = dict(row)
        for name in ("src_bytes", "dst_bytes"):
            if row.get(name) is not None:
                row[name] = round(row[name] * factor)
        out.append(row)
    return out


def _produce(bootstrap: str, topic: str, rows: list[dict[str, Any]], **send: Any) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    for row in rows:
        producer.send(topic, key=row["src_ip"].encode(), value=json.dumps(row).encode(), **send)
    producer.flush()
    producer.close()


def _netfraud(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a netfraud command to its end (JSON logs on stderr)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NETFRAUD_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", *args, "--log-format", "json"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _retrain(registry: Path, archive: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _netfraud(
        "retrain",
        "--model-dir",
        str(registry),
        "--archive-dir",
        str(archive),
        "--epochs",
        "15",
        "--device",
        "cpu",
        *extra,
        env={"NETFRAUD_RETRAIN__MIN_ROWS": "2000"},
    )


def _decision(registry: Registry) -> dict[str, Any]:
    newest = sorted((registry.root / "decisions").glob("*.json"))[-1]
    return json.loads(newest.read_text())  # type: ignore[no-any-return]


def _topics(topic_factory: Any) -> dict[str, str]:
    return {
        "flows": topic_factory("flows", 3),
        "alerts": topic_factory("alerts"),
        "dead": topic_factory("dlq"),
        "feedback": topic_factory("feedback", 1, {"cleanup.policy": "compact"}),
    }


def _serve(bootstrap: str, topics: dict[str, str], registry: Path, env: dict[str, str]) -> LogWatch:
    proc = serve(
        bootstrap,
        topics["flows"],
        registry,
        f"g-{topics['flows']}",
        topics["alerts"],
        topics["dead"],
        "--feedback-topic",
        topics["feedback"],
        env={"NETFRAUD_MODEL__RELOAD_INTERVAL_S": "1", **env},
    )
    return LogWatch(proc)


def test_retrain_on_shifted_traffic_is_swapped_in_without_a_restart(
    kafka_broker: Any, topic_factory: Any, model_registry: Path, tmp_path: Path
) -> None:
    """A retrain on archived shifted traffic is promoted and hot-swapped; nothing is lost."""
    bootstrap = kafka_broker.bootstrap
    topics = _topics(topic_factory)
    registry = _copy_registry(model_registry, tmp_path / "models")
    archive = tmp_path / "archive"
    old = registry.current()
    env = {"NETFRAUD_ARCHIVE__PATH": str(archive), "NETFRAUD_ARCHIVE__FLUSH_INTERVAL_S": "0.5"}
    watch = _serve(bootstrap, topics, registry.root, env)
    group = f"g-{topics['flows']}"

    # Phase 1: a day later, transfers 1.5 x larger; serve archives what it does not flag.
    first = _shifted(generate(5_000, seed=21, attacks=True, start=SHIFTED_START, hours=5), 1.5)
    _produce(bootstrap, topics["flows"], first)
    assert wait_until(lambda: _caught_up(bootstrap, group, topics["flows"]), 60), watch.tail()
    assert wait_until(lambda: len(read_archive(archive)) > 4_000, 10)

    # Phase 2 streams in while the retrain runs: the swap falls somewhere inside it.
    second = _shifted(
        generate(3_000, seed=22, attacks=True, start=SHIFTED_START + 5 * 3600, hours=3), 1.5
    )
    retrain = threading.Thread(target=lambda: results.append(_retrain(registry.root, archive)))
    results: list[subprocess.CompletedProcess[str]] = []
    retrain.start()
    for k in range(0, len(second), 300):
        _produce(bootstrap, topics["flows"], second[k : k + 300])
        time.sleep(0.5)
    retrain.join()
    done = results[0]
    assert done.returncode == EXIT_PROMOTED, done.stdout + done.stderr[-3000:]
    new = registry.current()
    swapped = watch.wait_for("model_swapped", 30)
    assert (swapped["previous"], swapped["version"]) == (old, new)

    # Phase 3, after the swap: alerts now carry the new version.
    third = _shifted(
        generate(1_000, seed=23, attacks=True, start=SHIFTED_START + 8 * 3600, hours=1, episodes=2),
        1.5,
    )
    _produce(bootstrap, topics["flows"], third)
    assert wait_until(lambda: _caught_up(bootstrap, group, topics["flows"]), 60), watch.tail()
    watch.stop()

    records = len(first) + len(second) + len(third)
    summary = watch.events("final_summary")[0]
    ends = end_offsets(bootstrap, topics["flows"])
    assert committed(bootstrap, group, topics["flows"]) == ends
    assert summary["scored"] == records == sum(ends.values())
    alerts = [json.loads(m.value) for m in read_all(bootstrap, topics["alerts"])]
    versions = _versions_in_offset_order(alerts)
    assert {v for seq in versions.values() for v in seq} == {old, new}
    for partition, sequence in versions.items():
        switch = sequence.index(new) if new in sequence else len(sequence)
        assert set(sequence[:switch]) <= {old} and set(sequence[switch:]) <= {new}, partition
    decision = _decision(registry)
    print(
        f"\nbefore={old} after={new} records={records} scored={summary['scored']} lost=0 "
        f"alerts={len(alerts)} (old {sum(a['rule']['version'] == old for a in alerts)}, "
        f"new {sum(a['rule']['version'] == new for a in alerts)}) reasons={decision['reasons']} "
        f"drift_top={decision['drift']['top_features_psi']}"
    )


def _versions_in_offset_order(alerts: list[dict[str, Any]]) -> dict[int, list[str]]:
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for alert in alerts:
        origin = alert["netfraud"]["provenance"]
        by_partition.setdefault(origin["partition"], []).append(
            (origin["offset"], alert["rule"]["version"])
        )
    return {p: [v for _, v in sorted(items)] for p, items in by_partition.items()}


def test_a_challenger_trained_on_contaminated_data_is_kept_out(
    kafka_broker: Any, model_registry: Path, tmp_path: Path
) -> None:
    """Attacks archived as if benign make a challenger that the labelled gate refuses."""
    registry = _copy_registry(model_registry, tmp_path / "models")
    champion = registry.current()
    # An archive a blind model would have left: many attack episodes among the benign flows.
    contaminated = generate(4_000, seed=31, attacks=True, start=SHIFTED_START, hours=4, episodes=30)
    batch = frame_to_batch(pd.DataFrame(contaminated))
    writer = ArchiveWriter(tmp_path / "archive")
    writer(batch, np.zeros(len(batch)), "blind")
    writer.close()
    validation = write_jsonl(
        tmp_path / "validation.jsonl",
        generate(3_000, seed=32, attacks=True, start=SHIFTED_START + DAY, hours=3, episodes=10),
    )

    done = _retrain(registry.root, tmp_path / "archive", "--validation-file", str(validation))

    assert done.returncode == EXIT_KEPT, done.stdout + done.stderr[-3000:]
    assert registry.current() == champion
    decision = _decision(registry)
    failed = {c["name"]: c["detail"] for c in decision["checks"] if not c["passed"]}
    assert "detection" in failed, decision
    logged = [json.loads(x) for x in done.stderr.splitlines() if '"retrain_decision"' in x]
    assert logged[0]["decision"] == "kept" and logged[0]["reasons"] == decision["reasons"]
    ours, theirs = decision["figures"]["challenger"], decision["figures"]["champion"]
    print(
        f"\nattack rows archived={sum(r['label'] == 'attack' for r in contaminated)} "
        f"of {len(contaminated)}; detection challenger={ours['labelled']['detection_rate']:.3f} "
        f"champion={theirs['labelled']['detection_rate']:.3f}; reasons={decision['reasons']}"
    )


def test_a_corrupted_bundle_is_refused_and_the_old_model_keeps_serving(
    kafka_broker: Any, topic_factory: Any, model_registry: Path, tmp_path: Path
) -> None:
    """CURRENT pointing at a bundle with a flipped byte: model_refused, old version serves on."""
    bootstrap = kafka_broker.bootstrap
    topics = _topics(topic_factory)
    registry = _copy_registry(model_registry, tmp_path / "models")
    old = registry.current()
    assert old is not None
    watch = _serve(bootstrap, topics, registry.root, {})
    group = f"g-{topics['flows']}"
    first = generate(1_500, seed=41, attacks=True, start=SHIFTED_START, hours=1.5, episodes=2)
    _produce(bootstrap, topics["flows"], first)
    assert wait_until(lambda: _caught_up(bootstrap, group, topics["flows"]), 60), watch.tail()

    bad = f"{old}-tampered"
    registry.publish(dataclasses.replace(registry.load(old), version=bad))
    weights = registry.path(bad) / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    (registry.root / "CURRENT").write_text(bad + "\n")
    refused = watch.wait_for("model_refused", 30)

    second = generate(
        1_500, seed=42, attacks=True, start=SHIFTED_START + 7200, hours=1.5, episodes=2
    )
    _produce(bootstrap, topics["flows"], second)
    assert wait_until(lambda: _caught_up(bootstrap, group, topics["flows"]), 60), watch.tail()
    watch.stop()

    assert refused["version"] == bad and refused["serving"] == old
    assert "checksum of weights.pt" in refused["error"]
    assert not watch.events("model_swapped")
    alerts = [json.loads(m.value) for m in read_all(bootstrap, topics["alerts"])]
    assert alerts and {a["rule"]["version"] for a in alerts} == {old}
    scored = watch.events("final_summary")[0]["scored"]
    assert scored == len(first) + len(second)
    print(f"\nrefused={bad} serving={old} records={scored} alerts={len(alerts)} lost=0")


def test_retrain_from_a_topic_reads_only_the_time_range(
    kafka_broker: Any, topic_factory: Any, model_registry: Path, tmp_path: Path
) -> None:
    """--from-topic --since --until reads by Kafka timestamp and drops what the champion flags."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory("history", 2)
    t0 = int(time.time() * 1000) - 3 * 3600 * 1000
    bursts = [
        generate(500, seed=51, attacks=False, start=SHIFTED_START, hours=0.5),
        generate(3_000, seed=52, attacks=True, start=SHIFTED_START + 3600, hours=3, episodes=3),
        generate(500, seed=53, attacks=False, start=SHIFTED_START + 5 * 3600, hours=0.5),
    ]
    for k, rows in enumerate(bursts):
        _produce(bootstrap, topic, rows, timestamp_ms=t0 + k * 3600 * 1000)
    since, until = t0 + 1800 * 1000, t0 + 5400 * 1000
    settings = load_settings(environ={"NETFRAUD_KAFKA__BOOTSTRAP_SERVERS": bootstrap})

    batch = read_topic_range(settings, topic, since / 1000, until / 1000)
    assert len(batch) == len(bursts[1])

    registry = _copy_registry(model_registry, tmp_path / "models")
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
    done = _netfraud(
        "retrain",
        "--model-dir",
        str(registry.root),
        "--from-topic",
        topic,
        "--since",
        iso(since),
        "--until",
        iso(until),
        "--epochs",
        "5",
        "--device",
        "cpu",
        env={"NETFRAUD_RETRAIN__MIN_ROWS": "1000", "NETFRAUD_KAFKA__BOOTSTRAP_SERVERS": bootstrap},
    )
    assert done.returncode in (EXIT_PROMOTED, EXIT_KEPT), done.stderr[-3000:]
    window = _decision(registry)["window"]
    assert window["source"].startswith(f"topic {topic}")
    assert window["excluded_flagged"] > 0
    assert window["rows"] + window["excluded_flagged"] == len(bursts[1])
    print(f"\nrange rows={len(batch)} of {sum(map(len, bursts))}; window={window}")
