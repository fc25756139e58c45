"""End-to-end throughput, latency and memory of ``netfraud serve`` on a real broker.

Run it with ``python -m bench.throughput`` (``make bench`` does). It starts its
own local broker on a free port, produces a fixed, seeded stream of about
500,000 netfraud JSON flows (about 280 bytes each) to a topic of several
partitions, trains a small model once (cached in ``.bench/``), then measures:

(a, b) records per second of one ``netfraud serve`` process, with kafka-python
    and with confluent-kafka. Serve runs as a subprocess, as deployed, with
    ``--stop-after-idle``; the rate is the records of its ``final_summary``
    log line over its busy span (first batch in hand to last batch
    committed), so process start, model load and the group join are left out.
(c) kafka-python's own consume ceiling: a bare ``KafkaConsumer`` with tuned
    fetch settings reading the same topic in this process, values discarded.
(d) two workers against one: ``serve --workers 2`` (one consumer group, the
    partitions split between two processes); the rate is all records over
    the union of the workers' busy spans, and the speed-up is taken against
    the one-worker run of the same round.
(e) record-to-alert latency at a fixed offered load of half the maximum
    measured in (a) (and in (b) for confluent): this process produces at a
    paced rate while serve runs; latency is the alert's broker append time
    (the alerts topic uses ``LogAppendTime``, so that is when the alert was
    written, just before its acknowledgement) minus the input record's produce
    timestamp. The first second of load is left out (cold start).
(f) peak RSS of each serve process: ``VmHWM`` from ``/proc/<pid>/status``,
    read while it runs; and the largest private (anonymous) part of its
    resident set seen in the same reads (``RssAnon``, every 0.25 s). The
    rest is file pages, mostly of shared libraries (torch's CUDA build
    maps several hundred MiB of them); how many of those were resident
    moved between 368 and 524 MiB across runs of the same code.
(g) scoring alone: the autoencoder on a 5,000-row batch (the default
    micro-batch), one torch thread as serve uses, on CPU, and on CUDA when
    there is one.
(h) share of the busy time per loop stage (fetch, decode, features, score,
    decide, produce, commit), from ``final_summary``'s ``stage_seconds``.

Each round runs (a), (d) and (b) back to back, so that ratios compare runs
made under the same load on the machine; figures are medians over rounds.
Context warm-up on assignment is off in these runs (``warmup_records=0``):
they measure the steady state, not rebalances.

Results go to ``bench/results/latest.json`` and are appended, with the commit
and the machine, to ``docs/performance.md``. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from detector.settings import ConsumerSettings

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench"
RESULTS = ROOT / "bench" / "results" / "latest.json"
REPORT = ROOT / "docs" / "performance.md"
LOCALKAFKA = ROOT / "deploy" / "kafka" / "localkafka.py"

#: Normal flows in the training file; the stream keeps its traffic rate.
TRAIN_RECORDS = 60_000
#: Rows per batch in the scoring and stage benchmarks: serve's default micro-batch.
SCORING_BATCH = ConsumerSettings.model_fields["max_batch_records"].default
#: Seconds a serve run may take before it is killed.
RUN_TIMEOUT_S = 600.0
#: The stages of the loop, in order, as named in ``stage_seconds``.
STAGES = ("fetch", "decode", "features", "score", "decide", "produce", "commit")
#: kafka-python consumer settings for the ceiling, chosen by measurement
#: (bigger fetches did not read faster; see docs/performance.md).
CEILING_CONSUMER = {
    "fetch_max_bytes": 52_428_800,
    "max_partition_fetch_bytes": 4_194_304,
    "max_poll_records": 10_000,
}


@dataclass(frozen=True)
class Plan:
    """What one benchmark run does.

    Attributes:
        records: Normal flows in the stream (attack episodes come on top).
        partitions: Partitions of the input topic.
        rounds: Repetitions of each measurement (medians are reported).
        latency_s: Seconds of paced load per latency run (fewer when the
            stream, sent once, runs out first).
        idle_s: ``--stop-after-idle`` of each serve run.
        seed: Seed of the stream.
    """

    records: int = 500_000
    partitions: int = 8
    rounds: int = 3
    latency_s: float = 20.0
    idle_s: float = 2.0
    seed: int = 2


@dataclass
class ServeRun:
    """One ``netfraud serve`` run over the whole input topic."""

    client: str
    workers: int
    records: int
    scored: int
    seconds: float
    cpu_seconds: float
    stage_seconds: dict[str, float]
    peak_rss_bytes: int
    peak_private_bytes: int

    @property
    def rate(self) -> float:
        """Records per second over the busy span."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_per_cpu(self) -> float:
        """Records per CPU second of the serve processes (all their threads)
        over the busy span: what the loop costs, whatever else the machine
        was doing."""
        return self.records / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


@dataclass
class Results:
    """Everything one benchmark run measured (medians unless named ``runs``)."""

    records: int = 0
    partitions: int = 0
    rounds: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, list[Any]] = field(default_factory=dict)


# -- the broker, the data and the model ------------------------------------------ #


def _localkafka() -> ModuleType:
    """``deploy/kafka/localkafka.py``, which is not a package module."""
    if "localkafka" in sys.modules:
        return sys.modules["localkafka"]
    spec = importlib.util.spec_from_file_location("localkafka", LOCALKAFKA)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LOCALKAFKA}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["localkafka"] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def broker() -> Iterator[str]:
    """A fresh single-node broker on a free port; yields its bootstrap address.

    The first rebalance of a new group waits 3 s for more members, so that
    both workers of a two-worker run join the first generation instead of
    one starting alone and being interrupted by a rebalance.
    """
    lk = _localkafka()
    data = WORK / "broker"
    shutil.rmtree(data, ignore_errors=True)
    kafka = lk.LocalKafka(lk.free_port(), data, {"group.initial.rebalance.delay.ms": "3000"})
    kafka.start(timeout=120.0)
    try:
        yield str(kafka.bootstrap)
    finally:
        kafka.stop()
        shutil.rmtree(data, ignore_errors=True)


class _Key(msgspec.Struct):
    src_ip: str


def stream(plan: Plan) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of the seeded stream, cached in ``.bench/``."""
    path = WORK / f"stream-{plan.seed}-{plan.records}.jsonl"
    if not path.exists():
        from detector.tools.generate import DEFAULT_START, generate

        hours = 24 * plan.records / TRAIN_RECORDS
        rows = generate(plan.records, plan.seed, True, DEFAULT_START + 86_400, hours)
        _write_lines(path, rows)
    decode = msgspec.json.Decoder(_Key).decode
    values = path.read_bytes().splitlines()
    return [(decode(v).src_ip.encode(), v) for v in values]


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    encode = msgspec.json.Encoder().encode
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(b"\n".join(encode(r) for r in rows) + b"\n")
    partial.replace(path)


def model_registry() -> Path:
    """A registry with one small model in service, trained once and cached."""
    from detector.model.registry import Registry

    root = WORK / "models"
    registry = Registry(root)
    try:
        if registry.pointer().version:
            registry.load(str(registry.pointer().version))
            return root
    except Exception as exc:  # a stale cache from older code: train again
        print(f"retraining the benchmark model ({exc})")
    shutil.rmtree(root, ignore_errors=True)
    return _train(root)


def _train(root: Path) -> Path:
    from detector.model.autoencoder import AutoencoderConfig
    from detector.model.fit import TrainOptions, train_bundle
    from detector.model.registry import Registry
    from detector.tools.generate import generate
    from detector.tools.train import load_labelled

    path = WORK / "train.jsonl"
    _write_lines(path, generate(TRAIN_RECORDS, seed=1, attacks=False, hours=24))
    batch, normal = load_labelled(path, "netfraud")
    bundle = train_bundle(
        batch,
        normal,
        AutoencoderConfig(max_epochs=20, seed=0),
        TrainOptions(device="cpu", seed=0),
    )
    registry = Registry(root)
    registry.publish(bundle)
    registry.promote(bundle.version)
    return root


# -- Kafka helpers ------------------------------------------------------------------ #


class _Silent:
    """Drops librdkafka's informational lines (a purged background queue at
    close, and the like), which would interleave with the figures."""

    def log(self, *args: Any) -> None:
        """Keep nothing."""


SILENT = _Silent()


def create_topic(
    bootstrap: str, prefix: str, partitions: int, config: dict[str, str] | None = None
) -> str:
    """Create a uniquely named topic and wait until it exists."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": SILENT}
    admin = AdminClient(client)
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    futures[name].result(30)
    return name


def _producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "logger": SILENT,
            # kafka-python's and Java's partitioner: a key lands where it would
            # with any other client.
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            **extra,
        }
    )


def produce_all(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce every record as fast as possible; return records per second."""
    producer = _producer(bootstrap, **{"linger.ms": 50, "batch.size": 1_000_000})
    started = time.perf_counter()
    for key, value in records:
        _produce(producer, topic, value, key)
    producer.flush(120)
    return len(records) / (time.perf_counter() - started)


def _produce(producer: Any, topic: str, value: bytes, key: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.05)


def partition_sizes(bootstrap: str, topic: str) -> list[int]:
    """Records in each partition of ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-sizes", "logger": SILENT}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        sizes = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            sizes.append(high - low)
        return sizes
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every message of ``topic`` (confluent-kafka messages), to its current end."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-reader",
            "enable.auto.commit": False,
            "logger": SILENT,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            _, ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Any] = []
        deadline = time.monotonic() + 60
        left = {p for p, end in ends.items() if end > 0}
        while left and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 1.0):
                offset, partition = m.offset(), m.partition()
                if m.error() is None and offset is not None and partition is not None:
                    out.append(m)
                    if offset + 1 >= ends[partition]:
                        left.discard(partition)
        return out
    finally:
        consumer.close()


# -- (c) kafka-python's consume ceiling ---------------------------------------------- #


def consume_ceiling(bootstrap: str, topic: str, total: int) -> tuple[float, float]:
    """Records per second, and per CPU second, of a bare kafka-python consumer
    reading ``topic``; the first poll's records (and its wait) are left out."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **CEILING_CONSUMER,
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        seen, counted, started, cpu = 0, 0, 0.0, 0.0
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while seen < total and time.monotonic() < deadline:
            chunk = consumer.poll(timeout_ms=500, max_records=CEILING_CONSUMER["max_poll_records"])
            got = sum(len(records) for records in chunk.values())
            if seen:
                counted += got
            elif got:
                started, cpu = time.perf_counter(), time.process_time()
            seen += got
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return (counted / elapsed if elapsed > 0 else 0.0), (counted / cpu if cpu > 0 else 0.0)
    finally:
        consumer.close()


def confluent_ceiling(bootstrap: str, topic: str, total: int) -> float:
    """Records per CPU second of a bare confluent-kafka consumer reading
    ``topic`` (each value touched, nothing else done)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ceiling-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "logger": SILENT,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        seen, counted, cpu = 0, 0, 0.0
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while seen < total and time.monotonic() < deadline:
            got = sum(1 for m in consumer.consume(10_000, 0.5) if m.value() is not None)
            if seen:
                counted += got
            elif got:
                cpu = time.process_time()
            seen += got
        cpu = time.process_time() - cpu
        return counted / cpu if cpu > 0 else 0.0
    finally:
        consumer.close()


def stage_costs(registry: Path, records: Sequence[tuple[bytes, bytes]]) -> dict[str, float]:
    """CPU microseconds per record of each in-process step of the loop, on
    5,000-record batches of the first 100,000 records. Thread CPU time, so
    whatever else the machine runs does not count."""
    import torch

    from detector.model.registry import Registry
    from features.context import FlowContext
    from features.formats import get_adapter
    from features.spec import derived_columns

    reg = Registry(registry)
    bundle = reg.load(str(reg.pointer().version))
    scorer, adapter = bundle.scorer("cpu"), get_adapter("netfraud")
    context = FlowContext(bundle.spec.windows)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spent = dict.fromkeys(("decode", "derived", "context", "transform", "score"), 0.0)
    count = 0
    try:
        for start in range(0, min(len(records), 100_000), SCORING_BATCH):
            values = [v for _, v in records[start : start + SCORING_BATCH]]
            clock = time.thread_time()

            def lap(step: str) -> None:
                nonlocal clock
                now = time.thread_time()
                spent[step] += now - clock
                clock = now

            batch = adapter.decode(values).batch
            lap("decode")
            raw = derived_columns(batch)
            lap("derived")
            columns, _ = context.update(batch)
            lap("context")
            raw.update(columns)
            matrix = bundle.spec.transform(raw)
            lap("transform")
            scorer.score(matrix)
            lap("score")
            count += len(values)
    finally:
        torch.set_num_threads(threads)
    return {step: round(seconds / count * 1e6, 2) for step, seconds in spent.items()}


# -- serve runs ------------------------------------------------------------------------ #


def serve_command(
    bootstrap: str,
    topic: str,
    registry: Path,
    client: str,
    workers: int,
    idle_s: float,
) -> list[str]:
    """The ``netfraud serve`` command line of one run, with fresh output topics."""
    alerts = create_topic(bootstrap, "bench.alerts", 1, {"message.timestamp.type": "LogAppendTime"})
    return [
        sys.executable,
        "-m",
        "detector.cli",
        "serve",
        "--bootstrap-servers",
        bootstrap,
        "--client",
        client,
        "--workers",
        str(workers),
        "--topics",
        topic,
        "--group",
        f"bench-{uuid.uuid4().hex[:8]}",
        "--alerts-topic",
        alerts,
        "--dead-letter-topic",
        f"bench.dlq-{uuid.uuid4().hex[:8]}",
        "--model-dir",
        str(registry),
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        "--stop-after-idle",
        str(idle_s),
    ]


def serve_env(feedback: str) -> dict[str, str]:
    """Environment of serve runs: no config file, no warm-up re-reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETFRAUD_")}
    env["NETFRAUD_CONTEXT__WARMUP_RECORDS"] = "0"
    env["NETFRAUD_TOPICS__FEEDBACK"] = feedback
    return env


def run_serve(
    command: list[str],
    env: dict[str, str],
    log: Path,
    while_running: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Run serve to its end; return its final_summary lines, its peak RSS,
    and the largest private (anonymous) resident set seen, over its processes.

    ``while_running`` is called once serve has been assigned partitions
    (it produces the load of a latency run).
    """
    peaks: dict[int, int] = {}
    private: dict[int, int] = {}
    with log.open("wb") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=err, stderr=err)
        try:
            if while_running is not None:
                _wait_for_line(log, b'"partitions_assigned"', proc)
                while_running()
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while proc.poll() is None:
                for pid in _process_tree(proc.pid):
                    hwm, anon = _memory(pid)
                    peaks[pid] = max(peaks.get(pid, 0), hwm)
                    private[pid] = max(private.get(pid, 0), anon)
                if time.monotonic() > deadline:
                    proc.kill()
                time.sleep(0.25)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"serve exited with {proc.returncode}:\n{text[-3000:]}")
    summaries = [json.loads(line) for line in text.splitlines() if '"final_summary"' in line]
    if not summaries:
        raise RuntimeError(f"serve logged no final_summary:\n{text[-3000:]}")
    return summaries, max(peaks.values(), default=0), max(private.values(), default=0)


def _wait_for_line(log: Path, marker: bytes, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while marker not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"serve never logged {marker!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def _memory(pid: int) -> tuple[int, int]:
    """A process's peak resident set (``VmHWM``) and its private resident set
    now (``RssAnon``), in bytes; zeros once it is gone."""
    found = {"VmHWM:": 0, "RssAnon:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(None, 1)[0] if line else ""
            if key in found:
                found[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found["VmHWM:"], found["RssAnon:"]


def serve_run(
    bootstrap: str,
    topic: str,
    registry: Path,
    client: str,
    workers: int,
    plan: Plan,
    feedback: str,
) -> ServeRun:
    """Serve the whole input topic once; rate over the union of busy spans."""
    command = serve_command(bootstrap, topic, registry, client, workers, plan.idle_s)
    log = WORK / "logs" / f"serve-{client}-{workers}w-{uuid.uuid4().hex[:6]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    summaries, peak, private = run_serve(command, serve_env(feedback), log)
    stages: dict[str, float] = {}
    for s in summaries:
        for stage, seconds in s.get("stage_seconds", {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return ServeRun(
        client=client,
        workers=workers,
        records=sum(int(s["records"]) for s in summaries),
        scored=sum(int(s["scored"]) for s in summaries),
        seconds=max(s["busy_until"] for s in summaries) - min(s["busy_from"] for s in summaries),
        cpu_seconds=sum(float(s["busy_cpu_seconds"]) for s in summaries),
        stage_seconds={k: round(v, 3) for k, v in stages.items()},
        peak_rss_bytes=peak,
        peak_private_bytes=private,
    )


# -- (e) latency --------------------------------------------------------------------- #


def latency_run(
    bootstrap: str,
    registry: Path,
    client: str,
    rate: float,
    records: Sequence[tuple[bytes, bytes]],
    plan: Plan,
    feedback: str,
) -> dict[str, float]:
    """p50/p99 record-to-alert latency at ``rate`` records per second."""
    topic = create_topic(bootstrap, "bench.latency", plan.partitions)
    command = serve_command(bootstrap, topic, registry, client, 1, 3.0)
    alerts = command[command.index("--alerts-topic") + 1]
    produced: dict[tuple[int, int], int] = {}
    load: dict[str, float] = {}

    def delivered(error: Any, message: Any) -> None:
        if error is None:
            produced[(message.partition(), message.offset())] = message.timestamp()[1]

    def offer() -> None:
        producer = _producer(bootstrap, **{"linger.ms": 1, "on_delivery": delivered})
        # Never past the end of the stream: replaying it from the start would
        # send each host's flows again with times already seen, and the
        # context features (connection rates that no longer decay) would flag
        # a third of the records, turning this into a flood-of-alerts test.
        count = min(int(rate * plan.latency_s), len(records))
        load["wall_start"] = time.time()
        started = time.perf_counter()
        for i in range(count):
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0.0005:
                time.sleep(ahead)
            key, value = records[i]
            _produce(producer, topic, value, key)
            if i % 256 == 0:
                producer.poll(0)
        producer.flush(60)
        load["offered"] = count / (time.perf_counter() - started)

    log = WORK / "logs" / f"latency-{client}-{uuid.uuid4().hex[:6]}.log"
    run_serve(command, serve_env(feedback), log, offer)
    skip_before_ms = (load["wall_start"] + 1.0) * 1000
    latencies = []
    for message in read_topic(bootstrap, alerts):
        origin = json.loads(message.value())["netfraud"]["provenance"]
        sent = produced.get((origin["partition"], origin["offset"]))
        if sent is not None and sent >= skip_before_ms:
            latencies.append((message.timestamp()[1] - sent) / 1000)
    if not latencies:
        raise RuntimeError(f"no alerts to measure latency with; see {log}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "offered_records_per_second": round(load["offered"], 1),
        "alerts": len(latencies),
        "p50_seconds": round(cuts[49], 4),
        "p99_seconds": round(cuts[98], 4),
        "max_seconds": round(max(latencies), 4),
    }


# -- (g) scoring alone ------------------------------------------------------------------ #


def scoring_rates(registry: Path, records: Sequence[tuple[bytes, bytes]]) -> dict[str, float]:
    """Rows per second of the autoencoder on one micro-batch, per device."""
    import torch

    from detector.model.registry import Registry
    from features.context import FlowContext
    from features.formats import get_adapter
    from features.spec import FlowVectorizer

    reg = Registry(registry)
    bundle = reg.load(str(reg.pointer().version))
    batch = get_adapter("netfraud").decode([v for _, v in records[:SCORING_BATCH]]).batch
    matrix = FlowVectorizer(bundle.spec, FlowContext(bundle.spec.windows))(batch).matrix
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as serve runs it (model.threads = 1)
    try:
        return {device: _rows_per_second(bundle.scorer(device), matrix) for device in devices}
    finally:
        torch.set_num_threads(threads)


def _rows_per_second(scorer: Any, matrix: Any) -> float:
    for _ in range(5):
        scorer.score(matrix)
    rates = []
    for _ in range(3):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            scorer.score(matrix)
            calls += 1
        rates.append(calls * len(matrix) / (time.perf_counter() - started))
    return statistics.median(rates)


# -- the whole benchmark ------------------------------------------------------------------ #


def run(plan: Plan) -> Results:
    """Every measurement of the module docstring, in rounds."""
    records = stream(plan)
    registry = model_registry()
    results = Results(len(records), plan.partitions, plan.rounds)
    runs = results.runs
    scoring = scoring_rates(registry, records)
    print(f"scoring alone: {', '.join(f'{d} {r:,.0f} rows/s' for d, r in scoring.items())}")
    if "cuda" not in scoring:
        print("scoring on CUDA: skipped (torch.cuda.is_available() is false)")
    costs = stage_costs(registry, records)
    print(f"CPU microseconds per record, in process: {costs}", flush=True)

    with broker() as bootstrap:
        topic = create_topic(bootstrap, "bench.flows", plan.partitions)
        feedback = create_topic(bootstrap, "bench.feedback", 1)
        rate = produce_all(bootstrap, topic, records)
        sizes = partition_sizes(bootstrap, topic)
        print(f"produced {len(records):,} records at {rate:,.0f}/s; per partition {sizes}")
        for _ in range(plan.rounds):
            runs.setdefault("confluent_consume_ceiling_per_cpu", []).append(
                round(confluent_ceiling(bootstrap, topic, len(records)), 1)
            )
        for r in range(plan.rounds):
            ceiling, ceiling_cpu = consume_ceiling(bootstrap, topic, len(records))
            runs.setdefault("kafka_python_consume_ceiling", []).append(round(ceiling, 1))
            runs.setdefault("kafka_python_consume_ceiling_per_cpu", []).append(
                round(ceiling_cpu, 1)
            )
            one = serve_run(bootstrap, topic, registry, "kafka-python", 1, plan, feedback)
            two = serve_run(bootstrap, topic, registry, "kafka-python", 2, plan, feedback)
            fast = serve_run(bootstrap, topic, registry, "confluent", 1, plan, feedback)
            for name, result in (("kafka_python", one), ("two_workers", two), ("confluent", fast)):
                runs.setdefault(name, []).append(
                    asdict(result)
                    | {"rate": round(result.rate, 1), "rate_per_cpu": round(result.rate_per_cpu, 1)}
                )
            runs.setdefault("two_worker_speedup", []).append(round(two.rate / one.rate, 3))
            print(
                f"round {r + 1}/{plan.rounds}: ceiling {ceiling:,.0f}/s, "
                f"kafka-python {one.rate:,.0f}/s, two workers {two.rate:,.0f}/s "
                f"({two.rate / one.rate:.2f}x), confluent {fast.rate:,.0f}/s "
                f"(per CPU second: {ceiling_cpu:,.0f}, {one.rate_per_cpu:,.0f}, "
                f"{two.rate_per_cpu:,.0f}, {fast.rate_per_cpu:,.0f})",
                flush=True,
            )
        kp = statistics.median(x["rate"] for x in runs["kafka_python"])
        cf = statistics.median(x["rate"] for x in runs["confluent"])
        for _ in range(plan.rounds):
            for client, top in (("kafka-python", kp), ("confluent", cf)):
                lat = latency_run(bootstrap, registry, client, top / 2, records, plan, feedback)
                runs.setdefault(f"latency_{client.replace('-', '_')}", []).append(lat)
                print(
                    f"latency {client} at {lat['offered_records_per_second']:,.0f}/s: "
                    f"p50 {lat['p50_seconds']:.3f} s, p99 {lat['p99_seconds']:.3f} s "
                    f"({lat['alerts']} alerts)",
                    flush=True,
                )
    results.figures = _figures(runs, scoring)
    results.figures["partition_sizes"] = sizes
    results.figures["two_worker_speedup_bound"] = round(split_bound(sizes), 3)
    results.figures["cpu_microseconds_per_record"] = _per_record(results.figures, costs)
    return results


def _per_record(figures: dict[str, Any], costs: dict[str, float]) -> dict[str, float]:
    """CPU microseconds per record: the in-process steps, each client's bare
    consume, and the whole loop as measured end to end."""
    out = dict(costs)
    for key, name in (
        ("kafka_python_consume_ceiling_per_cpu", "consume_kafka_python"),
        ("confluent_consume_ceiling_per_cpu", "consume_confluent"),
        ("records_per_cpu_second_kafka_python", "end_to_end_kafka_python"),
        ("records_per_cpu_second_confluent", "end_to_end_confluent"),
    ):
        out[name] = round(1e6 / figures[key], 2) if figures.get(key) else float("nan")
    return out


def split_bound(sizes: Sequence[int]) -> float:
    """The best two-worker speed-up the partition sizes allow: the range
    assignor gives the first half of the partitions to one worker and the
    rest to the other, and the busier one finishes last."""
    half = len(sizes) // 2
    busiest = max(sum(sizes[:half]), sum(sizes[half:]))
    return sum(sizes) / busiest if busiest else 1.0


def _median(values: Iterable[float]) -> float:
    listed = list(values)
    return round(statistics.median(listed), 4) if listed else float("nan")


def _shares(serve_runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median share of the busy span per stage; ``other`` is the remainder."""
    out: dict[str, float] = {}
    for stage in (*STAGES, "other"):
        shares = []
        for r in serve_runs:
            spent = r["stage_seconds"]
            value = r["seconds"] - sum(spent.values()) if stage == "other" else spent.get(stage, 0)
            shares.append(value / r["seconds"])
        out[stage] = round(statistics.median(shares), 3)
    return out


def _figures(runs: dict[str, list[Any]], scoring: dict[str, float]) -> dict[str, Any]:
    kp, cf, two = runs["kafka_python"], runs["confluent"], runs["two_workers"]
    ceiling = runs["kafka_python_consume_ceiling"]
    lat_kp, lat_cf = runs["latency_kafka_python"], runs["latency_confluent"]
    return {
        "records_per_second_kafka_python": _median(x["rate"] for x in kp),
        "records_per_second_confluent": _median(x["rate"] for x in cf),
        "kafka_python_consume_ceiling": _median(ceiling),
        "kafka_python_share_of_ceiling": _median(
            x["rate"] / c for x, c in zip(kp, ceiling, strict=True)
        ),
        "records_per_second_two_workers": _median(x["rate"] for x in two),
        "two_worker_speedup": _median(runs["two_worker_speedup"]),
        "records_per_cpu_second_kafka_python": _median(x["rate_per_cpu"] for x in kp),
        "records_per_cpu_second_confluent": _median(x["rate_per_cpu"] for x in cf),
        "records_per_cpu_second_two_workers": _median(x["rate_per_cpu"] for x in two),
        "kafka_python_consume_ceiling_per_cpu": _median(
            runs["kafka_python_consume_ceiling_per_cpu"]
        ),
        "confluent_consume_ceiling_per_cpu": _median(runs["confluent_consume_ceiling_per_cpu"]),
        "p50_latency_seconds": _median(x["p50_seconds"] for x in lat_kp),
        "p99_latency_seconds": _median(x["p99_seconds"] for x in lat_kp),
        "latency_offered_records_per_second": _median(
            x["offered_records_per_second"] for x in lat_kp
        ),
        "p50_latency_seconds_confluent": _median(x["p50_seconds"] for x in lat_cf),
        "p99_latency_seconds_confluent": _median(x["p99_seconds"] for x in lat_cf),
        "latency_offered_records_per_second_confluent": _median(
            x["offered_records_per_second"] for x in lat_cf
        ),
        "peak_rss_bytes": max(x["peak_rss_bytes"] for x in kp + two + cf),
        "peak_rss_bytes_by_run": {
            "kafka_python": max(x["peak_rss_bytes"] for x in kp),
            "two_workers": max(x["peak_rss_bytes"] for x in two),
            "confluent": max(x["peak_rss_bytes"] for x in cf),
        },
        "peak_private_bytes_by_run": {
            "kafka_python": max(x["peak_private_bytes"] for x in kp),
            "two_workers": max(x["peak_private_bytes"] for x in two),
            "confluent": max(x["peak_private_bytes"] for x in cf),
        },
        "scoring_records_per_second": round(scoring["cpu"], 1),
        "scoring_records_per_second_cuda": round(scoring["cuda"], 1) if "cuda" in scoring else None,
        "stage_share_kafka_python": _shares(kp),
        "stage_share_confluent": _shares(cf),
    }


# -- reporting ------------------------------------------------------------------------------ #


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and load of this machine."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


#: Distributions whose version moves the figures: torch's build sets most of
#: a process's resident memory, the clients and numba its speed.
MEASURED_LIBRARIES = ("torch", "numba", "numpy", "pandas", "kafka-python", "confluent-kafka")


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`MEASURED_LIBRARIES` (absent ones left out)."""
    found = {}
    for name in MEASURED_LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def commit() -> str:
    """The checked-out commit, marked ``-dirty`` when the tree has changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def table(results: Results) -> list[tuple[str, str, str, str]]:
    """(figure, value, per CPU second, target) rows of the summary table."""
    f = results.figures
    rss = f["peak_rss_bytes_by_run"]
    private = f["peak_private_bytes_by_run"]
    cuda = f["scoring_records_per_second_cuda"]

    def rate(key: str) -> str:
        return f"{f[key]:,.0f} rec/s"

    return [
        (
            "(a) kafka-python, 1 process",
            rate("records_per_second_kafka_python"),
            rate("records_per_cpu_second_kafka_python"),
            ">= 60,000 rec/s or >= 75% of (c)",
        ),
        (
            "(b) confluent, 1 process",
            rate("records_per_second_confluent"),
            rate("records_per_cpu_second_confluent"),
            ">= 150,000 rec/s",
        ),
        (
            "(c) kafka-python consume ceiling",
            rate("kafka_python_consume_ceiling"),
            rate("kafka_python_consume_ceiling_per_cpu"),
            "",
        ),
        ("    (a) / (c), same rounds", f"{f['kafka_python_share_of_ceiling']:.0%}", "", ">= 75%"),
        (
            "(d) kafka-python, 2 workers",
            f"{rate('records_per_second_two_workers')} ({f['two_worker_speedup']:.2f}x; "
            f"partition split allows {f['two_worker_speedup_bound']:.2f}x)",
            rate("records_per_cpu_second_two_workers"),
            ">= 1.6x",
        ),
        (
            "(e) latency p50 / p99, kafka-python",
            f"{f['p50_latency_seconds']:.3f} / {f['p99_latency_seconds']:.3f} s at "
            f"{f['latency_offered_records_per_second']:,.0f} rec/s",
            "",
            "p99 < 1 s",
        ),
        (
            "    latency p50 / p99, confluent",
            f"{f['p50_latency_seconds_confluent']:.3f} / "
            f"{f['p99_latency_seconds_confluent']:.3f} s at "
            f"{f['latency_offered_records_per_second_confluent']:,.0f} rec/s",
            "",
            "p99 < 1 s",
        ),
        (
            "(f) peak RSS per serve process",
            f"{rss['kafka_python'] / 2**20:,.0f} MiB kafka-python, "
            f"{rss['two_workers'] / 2**20:,.0f} MiB per worker, "
            f"{rss['confluent'] / 2**20:,.0f} MiB confluent",
            "",
            "< 1 GiB",
        ),
        (
            "    of which private (not shared library pages)",
            f"{private['kafka_python'] / 2**20:,.0f} MiB kafka-python, "
            f"{private['two_workers'] / 2**20:,.0f} MiB per worker, "
            f"{private['confluent'] / 2**20:,.0f} MiB confluent",
            "",
            "",
        ),
        (
            "(g) scoring alone, CPU, 1 thread",
            f"{f['scoring_records_per_second']:,.0f} rows/s",
            "",
            "",
        ),
        (
            "    scoring alone, CUDA",
            f"{cuda:,.0f} rows/s" if cuda else "skipped (no CUDA device)",
            "",
            "",
        ),
    ]


def stage_table(results: Results) -> list[tuple[str, str, str]]:
    """(stage, kafka-python share, confluent share) rows."""
    kp = results.figures["stage_share_kafka_python"]
    cf = results.figures["stage_share_confluent"]
    return [(stage, f"{kp[stage]:.0%}", f"{cf[stage]:.0%}") for stage in (*STAGES, "other")]


#: What each per-record cost is, for the tables.
COST_LABELS = {
    "consume_kafka_python": "consume, kafka-python (bare consumer)",
    "consume_confluent": "consume, confluent-kafka (bare consumer)",
    "decode": "decode (netfraud JSON adapter)",
    "derived": "features: derived columns",
    "context": "features: host context (FlowContext.update)",
    "transform": "features: fitted spec to matrix",
    "score": "score (autoencoder, 1 thread)",
    "end_to_end_kafka_python": "whole serve loop, kafka-python",
    "end_to_end_confluent": "whole serve loop, confluent",
}


def cost_table(results: Results) -> list[tuple[str, str]]:
    """(step, CPU microseconds per record) rows."""
    costs = results.figures["cpu_microseconds_per_record"]
    return [(label, f"{costs[key]:.1f}") for key, label in COST_LABELS.items() if key in costs]


def print_tables(results: Results) -> None:
    """The summary and the stage shares, on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    title = f"netfraud throughput: {results.records:,} records, medians of {results.rounds} rounds"
    summary = Table(title=title)
    for column in ("figure", "value", "per CPU second", "target"):
        summary.add_column(column)
    for row in table(results):
        summary.add_row(*row)
    console.print(summary)
    stages = Table(title="share of the busy time per stage (1 process)")
    for column in ("stage", "kafka-python", "confluent"):
        stages.add_column(column)
    for srow in stage_table(results):
        stages.add_row(*srow)
    console.print(stages)
    costs = Table(title="CPU microseconds per record (thread or process CPU time)")
    for column in ("step", "µs per record"):
        costs.add_column(column)
    for crow in cost_table(results):
        costs.add_row(*crow)
    console.print(costs)


def write_results(results: Results, plan: Plan, when: datetime) -> None:
    """``bench/results/latest.json``, and a dated section in docs/performance.md."""
    about: dict[str, Any] = {
        "date": when.isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
    }
    document = {**about, "plan": asdict(plan), **results.figures, "runs": results.runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    partial = RESULTS.with_suffix(".tmp")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(RESULTS)

    m = about["machine"]
    lines = [
        "",
        f"## {when:%Y-%m-%d %H:%M} UTC, commit {about['commit']}",
        "",
        f"{m['usable_cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"load average at the end {m['load_average']}; {results.records:,} records over "
        f"{results.partitions} partitions; medians of {results.rounds} rounds.",
        "",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ".",
        "",
        "| figure | value | per CPU second | target |",
        "|---|---|---|---|",
        *(f"| {a.strip()} | {b} | {c} | {d} |" for a, b, c, d in table(results)),
        "",
        "| stage | kafka-python | confluent |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in stage_table(results)),
        "",
        "| CPU per record | µs |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in cost_table(results)),
        "",
    ]
    if not REPORT.exists():
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(INTRO)
    with REPORT.open("a") as handle:
        handle.write("\n".join(lines))


INTRO = """\
# Performance

Figures from `make bench` (`bench/throughput.py`): end-to-end throughput of
`netfraud serve` through a real local broker with each Kafka client, the
kafka-python consume ceiling, two workers against one, record-to-alert
latency at half the maximum load, peak memory, scoring alone, and where the
loop's time goes. How each figure is measured is in the module docstring of
`bench/throughput.py`. Each run appends a dated section below; the newest
run is also in `bench/results/latest.json`.

Figures from a shared or busy machine move by tens of percent from run to
run: compare ratios measured in the same run, not absolute rates across
sections.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print, and write the results unless told not to."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--records", type=int, default=Plan.records)
    parser.add_argument("--partitions", type=int, default=Plan.partitions)
    parser.add_argument("--rounds", type=int, default=Plan.rounds)
    parser.add_argument("--latency-seconds", type=float, default=Plan.latency_s)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    plan = Plan(args.records, args.partitions, args.rounds, args.latency_seconds)
    when = datetime.now(UTC)
    results = run(plan)
    print_tables(results)
    if not args.no_write:
        write_results(results, plan, when)
        print(f"wrote {RESULTS.relative_to(ROOT)} and appended to {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
