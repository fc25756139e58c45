"""The decision threshold, severity bands and risk score.

All three come from scores of held-out normal rows, so that the threshold
means what it says: a target share of normal traffic is flagged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

#: ECS ``event.severity`` number for each band.
SEVERITY_NUMBER = {"low": 21, "medium": 47, "high": 73, "critical": 99}
_LEVELS = np.concatenate([np.linspace(0.0, 0.9, 46), 1.0 - np.logspace(-1, -5, 121)])


@dataclass(frozen=True)
class Calibration:
    """Threshold and score distribution of normal traffic.

    Attributes:
        threshold: Scores at or above it raise an alert.
        target_fpr: Share of normal rows the threshold was set to flag.
        bands: Lowest score of each severity band (``low`` = threshold).
        levels: Quantile levels of the normal score distribution.
        values: Normal scores at those levels.
        n: Number of normal rows it was calibrated on.
    """

    threshold: float
    target_fpr: float
    bands: dict[str, float]
    levels: list[float]
    values: list[float]
    n: int

    @classmethod
    def fit(cls, benign_scores: F64, target_fpr: float) -> Calibration:
        """Calibrate on held-out normal scores for a target false-positive rate."""
        if not 0 < target_fpr < 1:
            raise ValueError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
        s = np.sort(np.asarray(benign_scores, dtype=np.float64))
        if s.size < 10:
            raise ValueError(f"need at least 10 normal rows to calibrate, got {s.size}")

        def quantile(q: float) -> float:
            return float(np.quantile(s, min(q, 1.0)))

        threshold = quantile(1 - target_fpr)
        top = float(s[-1])
        bands = {
            "low": threshold,
            "medium": max(quantile(1 - target_fpr / 10), threshold),
            "high": max(quantile(1 - target_fpr / 100), threshold),
            "critical": max(2 * top, threshold),
        }
        values = np.maximum.accumulate(np.quantile(s, _LEVELS))
        return cls(threshold, target_fpr, bands, _LEVELS.tolist(), values.tolist(), int(s.size))

    def severity(self, scores: F64) -> npt.NDArray[np.object_]:
        """Severity band of each score (``None`` below the threshold)."""
        out = np.full(scores.shape, None, dtype=object)
        for name in ("low", "medium", "high", "critical"):
            out[scores >= self.bands[name]] = name
        return out

    def risk(self, scores: F64) -> F64:
        """A 0-100 risk score from how rare each score is among normal rows.

        25 points per decade of rarity: a score exceeded by 1% of normal
        traffic is 50, by 0.1% is 75, by 0.01% or fewer is 100.
        """
        values = np.asarray(self.values)
        cdf = np.interp(scores, values, np.asarray(self.levels))
        floor = 1.0 / (self.n + 1)
        tail = np.maximum(1.0 - cdf, floor)
        beyond = scores > values[-1]
        tail[beyond] = floor * values[-1] / np.maximum(scores[beyond], 1e-12)
        return np.asarray(np.clip(-25.0 * np.log10(tail), 0.0, 100.0), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def measured_fpr(benign_scores: F64, threshold: float) -> float:
    """Share of normal scores at or above the threshold."""
    s = np.asarray(benign_scores)
    return float(np.mean(s >= threshold)) if s.size else math.nan
