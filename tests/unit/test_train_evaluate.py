"""netfraud train then netfraud evaluate, on files the model never saw."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import shared_path, write_jsonl

from detector.cli import main
from detector.tools.generate import DEFAULT_START, generate

REPORT_KEYS = {"auroc", "average_precision", "tpr_at_fpr", "at_threshold", "detection_by_class"}


def _train_and_evaluate(tmp_path: Path, fmt: str, train: Path, test: Path, *extra: str) -> dict:
    models, report = tmp_path / "models", tmp_path / "report"
    assert (
        main(
            [
                "train",
                "--data",
                str(train),
                "--format",
                fmt,
                "--model-dir",
                str(models),
                "--device",
                "cpu",
                "--epochs",
                "40",
                *extra,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(test),
                "--format",
                fmt,
                "--model-dir",
                str(models),
                "--report",
                str(report),
                "--device",
                "cpu",
                "--peers",
                *extra,
            ]
        )
        == 0
    )
    assert (report / "roc.png").stat().st_size > 0 and (report / "scores.png").stat().st_size > 0
    result: dict = json.loads((report / "report.json").read_text())
    assert set(result) >= REPORT_KEYS
    assert set(result["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert set(result["peers"]) == {"isolation_forest", "pca"}
    return result


def test_zeek_logs_train_on_one_capture_evaluate_on_another(tmp_path: Path) -> None:
    """A model fitted on one Stratosphere capture separates attacks in another."""
    folder = shared_path("datasets/stratosphere-zeek")
    result = _train_and_evaluate(
        tmp_path,
        "zeek",
        folder / "011-zeek-mixed.conn.log.labeled",
        folder / "010-zeek-mixed.conn.log.labeled",
    )
    print(f"zeek 011 -> 010: auroc={result['auroc']:.4f} tpr@1%={result['tpr_at_fpr']['0.01']:.3f}")
    assert result["auroc"] > 0.9


def test_generated_flows_with_a_named_label_column(tmp_path: Path) -> None:
    """Any flow file with a label column works, the column named on the command line."""
    rows = generate(8_000, seed=31, attacks=False, hours=12)
    for row in rows:
        row["verdict"] = row.pop("label")
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test_rows = generate(4_000, seed=32, start=DEFAULT_START + 86_400, hours=6, episodes=5)
    for row in test_rows:
        row["verdict"] = row.pop("label")
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    result = _train_and_evaluate(
        tmp_path, "netfraud", train, test, "--label-column", "verdict", "--benign", "benign"
    )
    print(f"generated: auroc={result['auroc']:.4f} recall={result['at_threshold']['recall']:.3f}")
    assert result["auroc"] > 0.95
