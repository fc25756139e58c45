"""``netfraud evaluate``: how well a bundle separates attacks from normal traffic.

Reads a labelled file in any supported format, scores it with the bundle in
service (or a named version), and writes ``report.json`` and plots. With
``--peers`` it also fits IsolationForest and PCA reconstruction on a seeded
half of the file's normal rows, on the same feature vectors, and reports all
three on the other half plus every attack.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.model.bundle import Bundle
from detector.model.metrics import roc_curve, summary
from detector.model.registry import Registry
from detector.settings import Settings
from features.formats import get_adapter
from features.spec import Vectors, make_vectorizer

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

#: Per format: label column, value of normal rows, values left out of scoring.
LABELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "netfraud": ("label", "benign", ()),
    "zeek": ("label", "Benign", ("Background",)),
    "nsl-kdd": ("label", "normal", ()),
    "unsw-nb15": ("label", "0", ()),
    "cicflowmeter": ("label", "BENIGN", ()),
}
TABLE_FORMATS = ("nsl-kdd", "unsw-nb15")


@dataclass
class Labelled:
    """Feature vectors of a labelled file and what each row is."""

    vectors: Vectors
    attack: Mask
    classes: npt.NDArray[np.object_]


def load_for_bundle(
    bundle: Bundle,
    path: Path,
    fmt: str,
    label_column: str | None = None,
    benign: str | None = None,
) -> Labelled:
    """Vectorise a labelled file the way ``bundle`` expects its input.

    Flow files are vectorised in time order over every row (context needs all
    the traffic), then rows with an excluded label (Zeek's ``Background``) are
    dropped. Table formats are read as the data set's own columns.
    """
    column, normal_value, excluded = LABELS.get(fmt, ("label", "benign", ()))
    column, normal_value = label_column or column, benign or normal_value
    if bundle.spec.record == "table":
        return _load_table(bundle, path, fmt)
    batch = get_adapter(fmt).read_file(path)
    batch = batch.take(np.argsort(batch.num("ts"), kind="stable"))
    if column not in batch.extras:
        raise ValueError(f"{path}: no label column {column!r}; found {sorted(batch.extras)}")
    vectors = make_vectorizer(bundle.spec)(batch)
    labels = batch.extras[column].astype(str)
    keep = ~np.isin(labels, excluded)
    detail = _classes(batch.extras, labels)
    return Labelled(_subset(vectors, keep), labels[keep] != normal_value, detail[keep])


def _load_table(bundle: Bundle, path: Path, fmt: str) -> Labelled:
    from features.tabular import table_vectors

    table = load_table(path, fmt)
    vectors = table_vectors(bundle.spec, table.frame)
    return Labelled(vectors, table.label, table.attack_class)


def load_table(path: Path, fmt: str) -> Any:
    """A labelled table of a data set (NSL-KDD, UNSW-NB15, Zeek)."""
    if fmt == "zeek":
        from features.formats.zeek import load_table as zeek_table

        return zeek_table(path)
    from features.formats.datasets import load_table as dataset_table

    return dataset_table(path)


def _classes(extras: dict[str, Any], labels: npt.NDArray[Any]) -> npt.NDArray[np.object_]:
    for name in ("attack_type", "detailed_label", "attack_cat"):
        if name in extras:
            detail = extras[name].astype(object)
            return np.where((detail == "") | (detail == None), labels, detail)  # noqa: E711
    return labels.astype(object)


def _subset(vectors: Vectors, rows: Mask) -> Vectors:
    return Vectors(
        vectors.matrix[rows], {k: v[rows] for k, v in vectors.raw.items()}, vectors.warming[rows]
    )


def score_matrix(bundle: Bundle, matrix: F32, device: str = "cpu", chunk: int = 20_000) -> F64:
    """Scores of a feature matrix, a chunk at a time."""
    scorer = bundle.scorer(device)
    parts = [scorer.score(matrix[i : i + chunk]).scores for i in range(0, len(matrix), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def peer_scores(fit: F32, evaluate: F32, seed: int) -> dict[str, F64]:
    """IsolationForest (200 trees) and PCA (95% variance) reconstruction error,
    fitted on ``fit`` and scored on ``evaluate``; higher is more anomalous."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(fit)
    pca = PCA(n_components=0.95, random_state=seed).fit(fit)
    rebuilt = pca.inverse_transform(pca.transform(evaluate))
    return {
        "isolation_forest": -forest.score_samples(evaluate),
        "pca": np.mean((evaluate - rebuilt) ** 2, axis=1),
    }


def evaluate(
    bundle: Bundle, data: Labelled, peers: bool = False, seed: int = 0, device: str = "cpu"
) -> tuple[dict[str, Any], dict[str, F64], Mask, npt.NDArray[np.object_]]:
    """The report, the scores of each detector on the evaluated rows, and those
    rows' labels and classes."""
    rows = np.ones(len(data.attack), dtype=bool)
    scores = {"netfraud": score_matrix(bundle, data.vectors.matrix, device)}
    if peers:
        benign = np.flatnonzero(~data.attack)
        fit = np.random.default_rng(seed).permutation(benign)[: benign.size // 2]
        rows[fit] = False
        matrix = data.vectors.matrix
        scores["netfraud"] = scores["netfraud"][rows]
        scores.update(peer_scores(matrix[fit], matrix[rows], seed))
    attack, classes = data.attack[rows], data.classes[rows]
    report = summary(scores["netfraud"], attack, bundle.threshold, classes)
    report["model_version"] = bundle.version
    report["target_fpr"] = bundle.calibration.target_fpr
    if peers:
        report["peers"] = {
            name: summary(s, attack) for name, s in scores.items() if name != "netfraud"
        }
    return report, scores, attack, classes


def write_plots(
    report_dir: Path,
    scores: dict[str, F64],
    attack: Mask,
    classes: npt.NDArray[np.object_],
    threshold: float,
) -> list[Path]:
    """``roc.png`` (every detector) and ``scores.png`` (netfraud, by class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, s in scores.items():
        fpr, tpr = roc_curve(s, attack)
        ax.plot(fpr, tpr, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set(xlabel="false-positive rate (log)", ylabel="true-positive rate", title="ROC")
    ax.axvline(0.01, color="grey", lw=0.5, ls="--")
    ax.legend(loc="lower right")
    fig.tight_layout()
    roc = report_dir / "roc.png"
    fig.savefig(roc, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = np.log10(np.maximum(scores["netfraud"], 1e-6))
    groups = ["normal", *sorted({str(c) for c in classes[attack]})[:8]]
    for group in groups:
        rows = ~attack if group == "normal" else attack & (classes.astype(str) == group)
        ax.hist(s[rows], bins=60, histtype="step", density=True, label=group)
    ax.axvline(np.log10(threshold), color="black", lw=1, label="threshold")
    ax.set(xlabel="log10 score", ylabel="density", title="netfraud scores by class")
    ax.legend(fontsize=7)
    fig.tight_layout()
    dist = report_dir / "scores.png"
    fig.savefig(dist, dpi=110)
    plt.close(fig)
    return [roc, dist]


def evaluate_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``netfraud evaluate``."""
    fmt = args.format or settings.topics.format
    registry = Registry(settings.model.registry)
    bundle = registry.load(args.version)
    data = load_for_bundle(bundle, args.data, fmt, args.label_column, args.benign)
    report, scores, attack, classes = evaluate(
        bundle, data, args.peers, args.seed, settings.model.device
    )
    report.update(data=str(args.data), format=fmt)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "report.json").write_text(json.dumps(report, indent=2, default=float))
    plots = write_plots(args.report, scores, attack, classes, bundle.threshold)
    _print(report, args.report, plots)
    return 0


def _print(report: dict[str, Any], report_dir: Path, plots: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluation of {report['model_version']}")
    for column in ("detector", "AUROC", "AP", "TPR@1%FPR", "TPR@0.1%FPR"):
        table.add_column(column)
    rows = {"netfraud": report, **report.get("peers", {})}
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['auroc']:.4f}",
            f"{r['average_precision']:.4f}",
            f"{r['tpr_at_fpr']['0.01']:.3f}",
            f"{r['tpr_at_fpr']['0.001']:.3f}",
        )
    console = Console()
    console.print(table)
    at = report["at_threshold"]
    console.print(
        f"at the threshold: precision {at['precision']:.3f}, recall {at['recall']:.3f}, "
        f"false-positive rate {at['false_positive_rate']:.4f}"
    )
    console.print(f"wrote {report_dir / 'report.json'} and {', '.join(p.name for p in plots)}")
