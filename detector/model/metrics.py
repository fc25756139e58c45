"""Detection-quality figures from scores and labels (numpy only).

Every function takes scores where higher means more anomalous and a boolean
``attack`` array; none of them needs a threshold unless it says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def auroc(scores: F64, attack: Mask) -> float:
    """Area under the ROC curve (ties count one half)."""
    pos, neg = int(attack.sum()), int((~attack).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[attack].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(scores: F64, attack: Mask) -> float:
    """Precision averaged over recall steps, ranking by descending score (ties together)."""
    if not attack.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(attack[order])
    # The last row of each run of equal scores closes a threshold.
    ends = np.flatnonzero(np.diff(scores[order], append=-np.inf) != 0)
    precision = hits[ends] / (ends + 1)
    recall = hits[ends] / hits[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def tpr_at_fpr(scores: F64, attack: Mask, fpr: float) -> float:
    """Share of attacks at or above the normal-score quantile that flags ``fpr`` of normal rows."""
    benign = scores[~attack]
    if benign.size == 0 or not attack.any():
        return float("nan")
    threshold = float(np.quantile(benign, 1 - fpr, method="higher"))
    return float(np.mean(scores[attack] > threshold))


def roc_curve(scores: F64, attack: Mask, points: int = 400) -> tuple[F64, F64]:
    """False- and true-positive rates at ``points`` thresholds (for plotting)."""
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, points)))[::-1]
    fpr = np.array([np.mean(scores[~attack] >= t) for t in thresholds])
    tpr = np.array([np.mean(scores[attack] >= t) for t in thresholds])
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


def summary(
    scores: F64,
    attack: Mask,
    threshold: float | None = None,
    classes: npt.NDArray[np.object_] | None = None,
) -> dict[str, Any]:
    """The figures of a report: AUROC, AP, TPR at 1% and 0.1% FPR, and, given a
    threshold, precision, recall, false-positive rate and detection per class."""
    out: dict[str, Any] = {
        "rows": int(scores.size),
        "attacks": int(attack.sum()),
        "auroc": auroc(scores, attack),
        "average_precision": average_precision(scores, attack),
        "tpr_at_fpr": {
            "0.01": tpr_at_fpr(scores, attack, 0.01),
            "0.001": tpr_at_fpr(scores, attack, 0.001),
        },
    }
    if threshold is not None:
        flagged = scores >= threshold
        true_pos = int((flagged & attack).sum())
        out["at_threshold"] = {
            "threshold": threshold,
            "precision": true_pos / max(int(flagged.sum()), 1),
            "recall": true_pos / max(int(attack.sum()), 1),
            "false_positive_rate": float(flagged[~attack].mean()) if (~attack).any() else None,
        }
        if classes is not None:
            out["detection_by_class"] = {
                str(c): float(flagged[attack & (classes == c)].mean())
                for c in sorted(set(classes[attack].tolist()), key=str)
            }
    return out


def _average_ranks(values: F64) -> F64:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1], strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    return ranks
