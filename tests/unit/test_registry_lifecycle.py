"""Model lifecycle without a broker: archive, drift, the retrain gate and its exit codes."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from structlog.testing import capture_logs

from detector import cli
from detector.errors import ConfigError, TrainingDataError
from detector.lifecycle import retrain as rt
from detector.lifecycle.drift import DriftMonitor, Histogram, Reference, psi
from detector.model.autoencoder import AutoencoderConfig
from detector.model.bundle import Bundle
from detector.model.fit import TrainOptions, train_bundle
from detector.model.holder import ModelHolder
from detector.model.registry import Registry
from detector.ops.metrics import Metrics
from detector.settings import DriftSettings, load_settings
from detector.stream.archive import ArchiveWriter, partitions, prune, read_archive
from detector.stream.loop import Detector
from detector.stream.transport import Message, TopicPartition
from detector.tools.generate import DEFAULT_START, generate
from features.formats.netfraud import frame_to_batch
from features.records import FlowBatch
from features.spec import FlowVectorizer

torch.set_num_threads(1)
SMALL = AutoencoderConfig(hidden=(32,), bottleneck=6, max_epochs=4, seed=5)
HOUR = 3600.0


def _flows(n: int, seed: int, attacks: bool = False, start: float = DEFAULT_START) -> FlowBatch:
    rows = generate(n, seed=seed, attacks=attacks, start=start, hours=n / 1000)
    return frame_to_batch(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    """A small bundle trained on normal flows (with reference histograms)."""
    return train_bundle(_flows(3_000, 1), None, SMALL, TrainOptions(device="cpu", seed=5))


# --- archive --------------------------------------------------------------------------------


def _hourly(hours: Sequence[float], per_hour: int = 5) -> FlowBatch:
    """Rows spread over the given hours (epoch seconds of each hour's start)."""
    ts = np.concatenate([h + np.linspace(10, HOUR - 10, per_hour) for h in hours])
    rng = np.random.default_rng(0).permutation(ts.size)
    frame = pd.DataFrame(
        {
            "ts": ts[rng],
            "src_ip": "10.0.0.1",
            "dst_ip": "10.0.0.2",
            "proto": 6,
            "src_bytes": np.arange(ts.size, dtype=float),
            "service": None,
        }
    )
    return frame_to_batch(frame)


def test_archive_partitions_by_the_flows_hour_and_reads_back_sorted(tmp_path: Path) -> None:
    """Rows land in date=/hour= of their own ts (UTC); read back sorted, with score and version."""
    midnight = DEFAULT_START + 86_400
    batch = _hourly([midnight - HOUR, midnight, midnight + HOUR])
    writer = ArchiveWriter(tmp_path, flush_rows=1_000, flush_interval_s=3600)
    writer(batch, np.full(len(batch), 0.25), "v1")
    writer.close()

    names = [str(d.relative_to(tmp_path)) for _, d in partitions(tmp_path)]
    assert names == [
        "date=2026-01-05/hour=23",
        "date=2026-01-06/hour=00",
        "date=2026-01-06/hour=01",
    ]
    back = read_archive(tmp_path)
    assert len(back) == len(batch)
    assert np.all(np.diff(back.num("ts")) >= 0)
    assert set(back.extras["model_version"]) == {"v1"}
    assert np.allclose(back.extras["score"].astype(float), 0.25)
    order = np.argsort(batch.num("ts"))
    assert np.array_equal(back.num("src_bytes"), batch.num("src_bytes")[order])
    assert all(v is None for v in back.text("service"))


def test_archive_reads_a_time_range(tmp_path: Path) -> None:
    """read_archive keeps since <= ts < until."""
    batch = _hourly([DEFAULT_START, DEFAULT_START + HOUR, DEFAULT_START + 2 * HOUR])
    writer = ArchiveWriter(tmp_path)
    writer(batch, np.zeros(len(batch)), "v1")
    writer.close()

    part = read_archive(tmp_path, since=DEFAULT_START + HOUR, until=DEFAULT_START + 2 * HOUR)
    assert len(part) == 5
    ts = part.num("ts")
    assert ts.min() >= DEFAULT_START + HOUR and ts.max() < DEFAULT_START + 2 * HOUR


def test_archive_flushes_by_rows_by_time_and_at_close(tmp_path: Path) -> None:
    """A full buffer is written at once, an old one by the timer, the rest at close."""
    rows = _hourly([DEFAULT_START], per_hour=30)
    by_rows = ArchiveWriter(tmp_path / "rows", flush_rows=20, flush_interval_s=3600)
    by_rows(rows, np.zeros(30), "v1")
    assert len(read_archive(tmp_path / "rows")) == 30

    by_time = ArchiveWriter(tmp_path / "time", flush_rows=10_000, flush_interval_s=0.2)
    by_time(rows, np.zeros(30), "v1")
    deadline = time.monotonic() + 5
    while not len(read_archive(tmp_path / "time")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_archive(tmp_path / "time")) == 30

    at_close = ArchiveWriter(tmp_path / "close", flush_rows=10_000, flush_interval_s=3600)
    at_close(rows, np.zeros(30), "v1")
    assert len(read_archive(tmp_path / "close")) == 0
    at_close.close()
    assert len(read_archive(tmp_path / "close")) == 30
    for writer in (by_rows, by_time):
        writer.close()


def test_retention_drops_hours_older_than_the_newest_data(tmp_path: Path) -> None:
    """With 3 h retention only the newest three hour partitions stay; empty days go too."""
    hours = [DEFAULT_START + k * HOUR for k in range(0, 30, 2)]  # 00:00 day 1 .. 04:00 day 2
    writer = ArchiveWriter(tmp_path, retention_hours=5, flush_rows=10_000, flush_interval_s=3600)
    writer(_hourly(hours), np.zeros(5 * len(hours)), "v1")
    writer.close()

    kept = [start for start, _ in partitions(tmp_path)]
    assert kept == [hours[-3], hours[-2], hours[-1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["date=2026-01-06"]
    assert prune(tmp_path, 5) == []


class _FakeTransport:
    """Just enough of a transport for Detector.process."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes]] = []

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> None:
        self.produced.append((topic, value))

    def flush(self, timeout_s: float) -> None:
        pass

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass

    def warm_until(self) -> dict[TopicPartition, int]:
        return {}


def test_flagged_records_never_enter_the_archive(bundle: Bundle, tmp_path: Path) -> None:
    """Through the loop, only rows below the threshold are archived; alerted ones are not."""
    registry = Registry(tmp_path / "models")
    registry.publish(bundle)
    registry.promote(bundle.version)
    rows = generate(1_500, seed=4, attacks=True, start=DEFAULT_START + 86_400, hours=1.5)
    messages = [Message("flows", 0, i, None, json.dumps(r).encode(), 0) for i, r in enumerate(rows)]
    writer = ArchiveWriter(tmp_path / "archive", flush_rows=100_000, flush_interval_s=3600)
    transport = _FakeTransport()
    settings = load_settings(environ={})
    detector = Detector(
        settings,
        transport,
        ModelHolder(registry, "cpu", 60),
        archive=writer,  # type: ignore[arg-type]
    )

    report = detector.process(messages)
    writer.close()

    alerts = [json.loads(v) for t, v in transport.produced if t == settings.topics.alerts]
    flagged = {a["netfraud"]["provenance"]["offset"] for a in alerts}
    archived = read_archive(tmp_path / "archive")
    assert report.alerts == len(flagged) > 0
    assert len(archived) + len(flagged) == report.scored == len(rows)
    assert np.all(archived.extras["score"].astype(float) < bundle.threshold)
    archived_ts = set(archived.num("ts").tolist())
    assert not archived_ts & {float(rows[i]["ts"]) for i in flagged}


# --- drift ----------------------------------------------------------------------------------


def test_psi_of_known_shares() -> None:
    """PSI of (0.5, 0.5) against (0.25, 0.75) is 0.25 ln 2 + 0.25 ln 1.5; of itself 0."""
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-9)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected, rel=1e-9)
    assert psi([0.1] * 10, [0.1] * 10) == 0.0
    assert math.isnan(psi([0.5, 0.5], [0, 0]))


def test_psi_of_a_shifted_normal_matches_the_exact_bin_shares() -> None:
    """Deciles of N(0,1) against a sample of N(0.5,1): PSI as computed from the exact CDF."""
    rng = np.random.default_rng(1)
    hist = Histogram.fit(rng.normal(0, 1, 200_000))
    assert hist is not None
    assert np.allclose(hist.proportions[:-1], 0.1, atol=0.002)
    assert hist.proportions[-1] == 0.0

    cdf = np.vectorize(lambda x: 0.5 * (1 + math.erf((x - 0.5) / math.sqrt(2))))
    bounds = np.concatenate([[-np.inf], hist.edges, [np.inf]])
    exact = np.diff(cdf(bounds))
    measured = psi(hist.proportions, hist.counts(rng.normal(0.5, 1, 200_000)))
    assert measured == pytest.approx(psi([0.1] * 10, exact), abs=0.005)
    assert psi(hist.proportions, hist.counts(rng.normal(0, 1, 200_000))) < 0.002


def test_histogram_keeps_missing_values_in_their_own_bin() -> None:
    """NaN counts in a last bin; heavy ties collapse the edges without losing rows."""
    values = np.array([0.0] * 60 + [1.0] * 30 + [np.nan] * 10)
    hist = Histogram.fit(values)
    assert hist is not None
    assert hist.edges == (0.0, 1.0)
    assert hist.proportions == pytest.approx((0.0, 0.6, 0.3, 0.1))
    assert hist.counts(values).sum() == values.size


def test_bundle_metadata_holds_reference_histograms(bundle: Bundle) -> None:
    """train_bundle stores decile edges per numeric feature and of calibration scores."""
    reference = Reference.of(bundle)
    assert reference is not None and reference.score is not None
    assert {"src_bytes", "duration", "dst_pkts"} <= set(reference.features)
    for hist in reference.features.values():
        assert sum(hist.proportions) == pytest.approx(1.0)
        assert list(hist.edges) == sorted(set(hist.edges))


def test_drift_monitor_sets_gauges_every_n_records(bundle: Bundle) -> None:
    """After every_records records the PSI gauges are set, higher for shifted traffic."""
    metrics = Metrics()
    monitor = DriftMonitor(metrics, DriftSettings(every_records=1_000))
    batch = _flows(1_500, 7, start=DEFAULT_START + 86_400)
    shifted = frame_to_batch(
        pd.DataFrame(generate(1_500, seed=8, attacks=False, hours=1.5)).assign(
            src_bytes=lambda f: f["src_bytes"] * 20
        )
    )
    for data in (batch, shifted):
        vectors = FlowVectorizer(bundle.spec)(data)
        monitor(vectors, bundle.scorer().score(vectors.matrix).scores, bundle)
        gauge = metrics.registry.get_sample_value(
            "netfraud_feature_drift_psi", {"feature": "src_bytes"}
        )
        assert gauge is not None and gauge == pytest.approx(monitor.latest["src_bytes"])
    assert monitor.latest["src_bytes"] > 1.0
    assert "score" in monitor.latest


def _fake_bundle(target_fpr: float = 0.01) -> Any:
    """Only what the alert-rate watch reads: version, threshold 1.0, calibration, metadata."""
    calibration = SimpleNamespace(target_fpr=target_fpr)
    return SimpleNamespace(version="v1", threshold=1.0, calibration=calibration, metadata={})


def test_alert_rate_jump_is_logged_once_when_sustained() -> None:
    """A high alert rate is reported only after alert_sustained_s, and only once."""
    now = [0.0]
    settings = DriftSettings(alert_window_records=1_000, alert_sustained_s=30, alert_rate_factor=3)
    monitor = DriftMonitor(Metrics(), settings, clock=lambda: now[0])
    fake = _fake_bundle(0.01)
    high = np.r_[np.full(50, 2.0), np.zeros(450)]  # 10 % at or above threshold 1.0
    vectors: Any = None

    with capture_logs() as logs:
        for step in range(8):
            now[0] = step * 10.0
            monitor(vectors, high, fake)
    jumps = [e for e in logs if e["event"] == "alert_rate_jump"]
    assert len(jumps) == 1
    assert jumps[0]["alert_rate"] == pytest.approx(0.1)
    assert jumps[0]["sustained_s"] >= 30


def test_alert_rate_at_the_target_is_not_reported() -> None:
    """An alert rate within k x the calibrated rate logs nothing."""
    monitor = DriftMonitor(Metrics(), DriftSettings(alert_window_records=500, alert_sustained_s=0))
    normal = np.r_[np.full(10, 2.0), np.zeros(990)]  # 1 %
    with capture_logs() as logs:
        for _ in range(5):
            monitor(None, normal, _fake_bundle(0.01))  # type: ignore[arg-type]
    assert not [e for e in logs if e["event"] == "alert_rate_jump"]


# --- the gate -------------------------------------------------------------------------------


def _figures(
    fpr: float, detection: float | None = None, labelled_fpr: float = 0.01, rows: int = 5_000
) -> rt.Figures:
    labelled = None
    if detection is not None:
        labelled = rt.Labelled(detection, labelled_fpr, 0.95, attacks=500, benign=5_000)
    return rt.Figures("v", 1.0, 0.01, fpr, rows, {"p50": 0.2}, labelled)


def test_gate_promotes_a_challenger_as_good_as_the_champion() -> None:
    """Same false-positive rate and detection: promoted, every check listed."""
    verdict = rt.gate(_figures(0.011, 0.9), _figures(0.010, 0.9), rt.GatePolicy())
    assert verdict.promote
    assert [c.name for c in verdict.checks] == ["schema", "fpr_recent", "fpr_labelled", "detection"]


def test_gate_keeps_a_challenger_with_too_many_false_positives() -> None:
    """1.25 x the champion's rate (plus noise margin) is the limit."""
    verdict = rt.gate(_figures(0.03), _figures(0.01), rt.GatePolicy(max_fpr_ratio=1.25))
    assert not verdict.promote
    assert (
        len(verdict.reasons) == 1 and "false-positive rate on recent traffic" in verdict.reasons[0]
    )


def test_gate_measures_against_the_champions_calibrated_rate_at_least() -> None:
    """A champion measuring ~0 on its own archive does not force every challenger out."""
    verdict = rt.gate(_figures(0.0105), _figures(0.0), rt.GatePolicy())
    assert verdict.promote


def test_gate_keeps_a_challenger_that_detects_less() -> None:
    """Detection on the labelled file may fall by max_detection_drop at most."""
    policy = rt.GatePolicy(max_detection_drop=0.02)
    assert rt.gate(_figures(0.01, 0.89), _figures(0.01, 0.90), policy).promote
    verdict = rt.gate(_figures(0.01, 0.60), _figures(0.01, 0.90), policy)
    assert not verdict.promote
    assert [c.name for c in verdict.checks if not c.passed] == ["detection"]
    assert "0.6000 < champion's 0.9000" in verdict.reasons[0]


def test_gate_promotes_the_first_model_and_refuses_a_bad_schema() -> None:
    """No champion: promoted. A schema the input cannot feed: never."""
    assert rt.gate(_figures(0.5), None, rt.GatePolicy()).promote
    verdict = rt.gate(_figures(0.01), _figures(0.01), rt.GatePolicy(), "needs field 'x'")
    assert not verdict.promote and "needs field 'x'" in verdict.reasons[0]


def test_gate_keeps_a_challenger_fitted_on_the_champions_own_rows() -> None:
    """A rerun with nothing new archived does not churn the registry."""
    verdict = rt.gate(_figures(0.01), _figures(0.01), rt.GatePolicy(), same_data=True)
    assert not verdict.promote and "nothing new" in verdict.reasons[0]


def test_schedule_retrains_periodically_and_survives_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve --retrain-every: runs in a thread, logs a failure and goes on."""
    calls: list[float] = []

    def fake(settings: Any) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TrainingDataError("archive holds no rows yet")

    monkeypatch.setattr(rt, "retrain", fake)
    args = cli._parser().parse_args(["serve", "--retrain-every", "0.1s"])
    settings = load_settings(overrides=cli._overrides(args), environ={})
    assert settings.retrain.every == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="archive"):
        rt.start_schedule(settings, threading.Event())
    args = cli._parser().parse_args(["serve", "--retrain-every", "0.1s", "--archive-dir", "a"])
    settings = load_settings(overrides=cli._overrides(args), environ={})
    stop = threading.Event()
    with capture_logs() as logs:
        thread = rt.start_schedule(settings, stop)
        assert wait_for(lambda: len(calls) >= 3, 5)
        stop.set()
        thread.join(2)
    assert not thread.is_alive()
    assert [e["event"] for e in logs].count("retrain_failed") == 1


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def test_holdout_is_every_fifth_ten_minute_block() -> None:
    """20 % held out as every fifth 10-minute block, so it spans the whole window."""
    batch = _hourly([DEFAULT_START + k * HOUR for k in range(10)], per_hour=60)
    settings = load_settings(environ={"NETFRAUD_RETRAIN__MIN_ROWS": "100"}).retrain
    holdout = rt.split_window(batch, settings)
    block = np.floor((batch.num("ts") - batch.num("ts").min()) / 600).astype(int)
    assert np.array_equal(holdout, block % 5 == 4)
    assert 0.15 < holdout.mean() < 0.25
    assert len(np.unique(np.floor(batch.num("ts")[holdout] / HOUR))) == 10
    with pytest.raises(TrainingDataError, match="min_rows"):
        rt.split_window(batch.take(np.arange(50)), settings)


def test_auroc_matches_pairwise_counting() -> None:
    """AUROC equals the share of (attack, benign) pairs ordered right, ties counting half."""
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=300), 1)
    positive = rng.random(300) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert rt.auroc(scores, positive) == pytest.approx(pairs)
    assert rt.auroc(np.arange(4.0), np.array([False, False, True, True])) == 1.0


def test_retrain_every_accepts_durations() -> None:
    """[retrain] every takes 30m, 6h, 1d or seconds; anything else names the key."""
    assert load_settings(overrides={"retrain.every": "6h"}, environ={}).retrain.every == 21_600
    assert load_settings(overrides={"retrain.every": "30m"}, environ={}).retrain.every == 1_800
    assert load_settings(environ={"NETFRAUD_RETRAIN__EVERY": "90"}).retrain.every == 90
    with pytest.raises(ConfigError, match=r"retrain\.every"):
        load_settings(overrides={"retrain.every": "soon"}, environ={})


# --- the command and its exit codes ---------------------------------------------------------


@pytest.fixture
def retrain_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An archive of 4,000 normal flows and the flags to retrain from it."""
    for name in list(os.environ):
        if name.startswith("NETFRAUD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETFRAUD_RETRAIN__MIN_ROWS", "1000")
    writer = ArchiveWriter(tmp_path / "archive")
    batch = _flows(4_000, 9, start=DEFAULT_START + 86_400)
    writer(batch, np.zeros(len(batch)), "older")
    writer.close()
    return [
        "retrain",
        "--model-dir",
        str(tmp_path / "models"),
        "--archive-dir",
        str(tmp_path / "archive"),
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--log-format",
        "json",
    ]


def test_exit_codes_promoted_kept_failed(
    retrain_env: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 for the first (promoted) model, 3 when the gate keeps the champion, 1 on failure."""
    registry = Registry(tmp_path / "models")
    assert cli.main(retrain_env) == rt.EXIT_PROMOTED
    first = registry.current()
    assert first is not None

    refuse = rt.Verdict(False, (rt.Check("fpr_recent", False, "too many false positives"),))
    monkeypatch.setattr(rt, "gate", lambda *a, **k: refuse)
    assert cli.main(retrain_env) == rt.EXIT_KEPT
    assert registry.current() == first
    assert len(registry.versions()) == 2

    records = sorted((registry.root / "decisions").glob("*.json"))
    decisions = [json.loads(p.read_text()) for p in records]
    assert [d["decision"] for d in decisions] == ["promoted", "kept"]
    assert decisions[1]["reasons"] == ["too many false positives"]
    assert decisions[1]["drift"]["against"] == first
    assert len(decisions[1]["drift"]["top_features_psi"]) == 5
    kept = decisions[1]["challenger"]
    assert json.loads((registry.root / "annotations" / f"{kept}.json").read_text()) == decisions[1]

    monkeypatch.setenv("NETFRAUD_RETRAIN__MIN_ROWS", "1000000")
    assert cli.main(retrain_env) == rt.EXIT_FAILED


def test_retrain_without_an_archive_fails_with_exit_1(
    retrain_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing archive is exit code 1 with a message saying where it looked."""
    args = [a if a != str(tmp_path / "archive") else str(tmp_path / "nowhere") for a in retrain_env]
    assert cli.main(args) == rt.EXIT_FAILED
    assert "nowhere does not exist" in capsys.readouterr().err
