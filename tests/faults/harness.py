"""Fault-injection harness: replay a labelled stream, break things, reconcile.

A fault test replays a stream through ``netfraud serve``, injects its fault
(SIGKILL, a broker restart, a rebalance, ...) and compares the alerts it got
with those of a clean run of the same stream, by provenance (input
partition and offset). Every test prints one line of figures::

    [kill/at-least-once] records_in=101720 kills=5 alerts_expected=3315 ...

Context state is made independent of how partitions interleave (no idle
eviction, warm-up over whole partitions; see :data:`DETERMINISTIC_ENV`), so
that a difference from the clean run is a delivery fault, not a borderline
score.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from helpers import committed, end_offsets, serve, wait_until
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from detector.tools.generate import DEFAULT_START, generate

#: Records in the replayed stream (normal flows; attack flows come on top).
STREAM_RECORDS = 100_000
STREAM_SEED = 21
#: Context settings that make scores independent of partition interleaving.
DETERMINISTIC_ENV = {
    "NETFRAUD_CONTEXT__IDLE_TIMEOUT_S": "1e12",
    "NETFRAUD_CONTEXT__WARMUP_RECORDS": "1000000",
}
SERVE_TIMEOUT_S = 300.0
Key = tuple[int, int]  # (partition, offset) of an input record


# --- the stream ------------------------------------------------------------------------------


def stream_rows(records: int = STREAM_RECORDS, seed: int = STREAM_SEED) -> list[dict[str, Any]]:
    """A labelled day of flows with attack episodes, the same for the same seed."""
    return generate(records, seed=seed, attacks=True, start=DEFAULT_START + 86_400, hours=24)


def encode_rows(rows: Iterable[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs keyed by source address, as ``netfraud replay`` sends them."""
    return [(r["src_ip"].encode(), json.dumps(r, separators=(",", ":")).encode()) for r in rows]


def produce_fast(bootstrap: str, topic: str, pairs: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send (key, value) pairs with librdkafka (much faster than kafka-python); wait for all."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "message.max.bytes": 2_000_000,
            "log_level": 3,
        }
    )
    failures: list[str] = []

    def report(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    n = 0
    for key, value in pairs:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:  # local queue full: let it drain
                producer.poll(0.1)
        producer.poll(0)
        n += 1
    producer.flush(120)
    assert not failures, failures[:3]
    return n


def create_topics(bootstrap: str, topics: dict[str, int], **configs: str) -> None:
    """Create topics with the given partition counts (replication 1)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="netfraud-faults-admin")
    try:
        specs = [NewTopic(name, n, 1, topic_configs=dict(configs)) for name, n in topics.items()]
        admin.create_topics(specs)
        admin.wait_for_topics(list(topics), timeout_ms=30_000)
    finally:
        admin.close()


def replay_on(bootstrap: str, stream: Stream) -> str:
    """The replayed stream again on another broker: same partitions and offsets,
    so the clean run's expected alerts apply."""
    topic = unique("replay")
    create_topics(bootstrap, {topic: stream.partitions})
    produce_fast(bootstrap, topic, encode_rows(stream_rows()))
    offsets = Offsets(bootstrap)
    try:
        assert sum(offsets.ends(topic).values()) == stream.records
    finally:
        offsets.close()
    return topic


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Stream:
    """A replayed stream and what a clean run of it alerts on."""

    bootstrap: str
    topic: str
    partitions: int
    records: int
    expected: frozenset[Key]
    clean_seconds: float


# --- reading results -------------------------------------------------------------------------


def read_messages(
    bootstrap: str, topic: str, committed_only: bool = False, idle_ms: int = 5_000
) -> list[Any]:
    """Every message of ``topic`` (``read_committed`` when ``committed_only``)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def alert_keys(messages: Iterable[Any]) -> list[Key]:
    """(partition, offset) of the input record of each alert, duplicates kept."""
    out = []
    for message in messages:
        where = json.loads(message.value)["netfraud"]["provenance"]
        out.append((int(where["partition"]), int(where["offset"])))
    return out


def all_committed(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` committed the end of every partition of ``topic``
    (``False`` while the broker cannot say, for example just after a restart)."""
    try:
        ends = end_offsets(bootstrap, topic)
        done = committed(bootstrap, group, topic)
    except KafkaError:
        return False
    return all(done.get(p, 0) >= end for p, end in ends.items())


def summaries(log: str, event: str = "final_summary") -> list[dict[str, Any]]:
    """Every JSON log line of one event."""
    out = []
    for line in log.splitlines():
        if f'"{event}"' in line and line.startswith("{"):
            out.append(json.loads(line))
    return out


# --- figures ---------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a fault test reports: in, expected, seen, duplicates, lost."""

    name: str
    records_in: int
    expected: set[Key]
    seen: list[Key]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def distinct(self) -> set[Key]:
        """Distinct alerted records."""
        return set(self.seen)

    @property
    def duplicates(self) -> int:
        """Alerts beyond the first for the same record."""
        return len(self.seen) - len(self.distinct)

    @property
    def lost(self) -> set[Key]:
        """Expected alerts never seen."""
        return self.expected - self.distinct

    @property
    def unexpected(self) -> set[Key]:
        """Alerts seen that the clean run did not raise."""
        return self.distinct - self.expected

    def line(self) -> str:
        """The figures as one ``key=value`` line."""
        figures = {
            "records_in": self.records_in,
            **{k: v for k, v in self.extra.items() if not isinstance(v, dict | list)},
            "alerts_expected": len(self.expected),
            "alerts_seen": len(self.seen),
            "distinct": len(self.distinct),
            "duplicates": self.duplicates,
            "unexpected": len(self.unexpected),
            "lost": len(self.lost),
        }
        return f"[{self.name}] " + " ".join(f"{k}={v}" for k, v in figures.items())

    def show(self) -> Figures:
        """Print the line (``pytest -s`` shows it; ``-rA`` in the summary)."""
        print("\n" + self.line())
        for key, value in self.extra.items():
            if isinstance(value, dict | list):
                print(f"[{self.name}] {key}: {value}")
        return self


# --- serve as a process ----------------------------------------------------------------------


@dataclass
class Server:
    """One ``netfraud serve`` process, logging JSON lines to a file."""

    bootstrap: str
    topic: str
    registry: Path
    group: str
    alerts: str
    dead: str
    log: Path
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        """Start it (a new process each time; the log file is appended to)."""
        self.proc = serve(
            self.bootstrap,
            self.topic,
            self.registry,
            self.group,
            self.alerts,
            self.dead,
            *self.args,
            env={**DETERMINISTIC_ENV, **self.env},
            log=self.log,
        )
        return self

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit, no transaction end."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = SERVE_TIMEOUT_S) -> int:
        """Wait for it to exit by itself; SIGKILL it after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def text(self) -> str:
        """Everything it (and its predecessors on this log) wrote."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        """The end of its log, for assertion messages."""
        return "\n".join(self.text().splitlines()[-lines:])


def kill_points(seed: int, count: int, low: float = 0.05, high: float = 0.9) -> list[float]:
    """``count`` seeded, sorted fractions of the stream at which to kill."""
    rng = random.Random(seed)
    return sorted(rng.uniform(low, high) for _ in range(count))


class Offsets:
    """Committed and end offsets, asked of the broker through one admin client
    (a client per question costs more CPU than the serve process under test)."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="netfraud-faults")
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="netfraud-faults")

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed offset per partition of ``topic`` for ``group``."""
        offsets = self.admin.list_group_offsets(group).get(group, {})
        return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}

    def progress(self, group: str, topic: str) -> int:
        """Records committed so far by ``group`` on ``topic`` (-1 while unknown)."""
        try:
            return sum(self.committed(group, topic).values())
        except KafkaError:
            return -1

    def ends(self, topic: str) -> dict[int, int]:
        """End offset of each partition of ``topic``."""
        ids = self.consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(ids)]
        return {tp.partition: end for tp, end in self.consumer.end_offsets(parts).items()}

    def close(self) -> None:
        """Release the clients."""
        self.admin.close()
        self.consumer.close()


class OpenTransaction:
    """Tells whether a transaction with messages in ``topic`` is open now: its
    end offset is ahead of its last stable offset (what read_committed sees)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.tp = TopicPartition(topic, 0)
        self.views = [
            KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=level)
            for level in ("read_uncommitted", "read_committed")
        ]

    def __call__(self) -> bool:
        end, stable = (view.end_offsets([self.tp])[self.tp] for view in self.views)
        return bool(end > stable)

    def close(self) -> None:
        """Release the clients."""
        for view in self.views:
            view.close()


def run_with_kills(
    server: Server,
    total: int,
    points: Sequence[float],
    seed: int = 0,
    mid_transaction: bool = False,
) -> dict[str, Any]:
    """Start ``server``, SIGKILL it once its commits pass each point, restart it
    each time, and let the last one run until the stream is done.

    The kill comes a seeded fraction of a second after the point, to land
    anywhere in a batch; with ``mid_transaction``, as soon as a transaction
    with alerts in it is open (within 3 s), to land between begin and commit.

    Returns:
        Kill figures: how many, at which committed counts, how many while a
        transaction was open, seconds in all.
    """
    began, at, rng, inside = time.monotonic(), [], random.Random(seed), 0
    offsets = Offsets(server.bootstrap)
    open_now = OpenTransaction(server.bootstrap, server.alerts) if mid_transaction else None
    try:
        for point in points:
            server.start()
            target = int(point * total)
            reached = wait_until(partial(_passed, server, offsets, target), SERVE_TIMEOUT_S, 0.1)
            assert reached and server.alive(), f"serve stalled before {target}:\n{server.tail()}"
            if open_now is not None:
                inside += wait_until(open_now, 3.0, 0.0)
            else:
                time.sleep(rng.uniform(0.0, 0.4))
            server.kill()
            at.append(offsets.progress(server.group, server.topic))
    finally:
        offsets.close()
        if open_now is not None:
            open_now.close()
    server.args = [*server.args, "--stop-after-idle", "4"]
    server.start()
    code = server.wait()
    assert code == 0, server.tail()
    figures: dict[str, Any] = {"kills": len(at), "killed_at": at}
    if mid_transaction:
        figures["kills_inside_a_transaction"] = inside
    return {**figures, "seconds": round(time.monotonic() - began, 1)}


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET an endpoint of serve's metrics port: (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text as (name, labels, value) samples."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items())


def _passed(server: Server, offsets: Offsets, target: int) -> bool:
    if not server.alive():
        return True  # it died: the caller's assertion shows its log
    return offsets.progress(server.group, server.topic) >= target


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (``None`` once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def counts(keys: Iterable[Key]) -> Counter[Key]:
    """How often each record was alerted."""
    return Counter(keys)


def environment_has(name: str) -> bool:
    """Whether an executable is on PATH."""
    return any(
        os.access(os.path.join(d, name), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)
    )
