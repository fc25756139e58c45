"""Drift of serving traffic against the training snapshot, and jumps in the alert rate.

The population stability index (PSI) compares the share of rows falling in
each bin of a reference histogram with the share seen now::

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

0 means the same distribution; by common rule of thumb below 0.1 is stable,
0.1-0.25 a moderate shift and above 0.25 a large one. Empty bins are given a
share of :data:`PSI_FLOOR` so the logarithm stays finite.

The reference histograms are computed when a bundle is trained (decile edges
of each raw numeric feature on the rows the weights were fitted on, and of
the score on the calibration rows) and stored in its metadata under
``reference``; a bundle without them gets no drift figures, only the alert
rate watch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.logs import get_logger
from detector.model.bundle import Bundle
from detector.ops.metrics import Metrics
from detector.settings import DriftSettings
from features.spec import FittedSpec, Vectors

log = get_logger("drift")

F64 = npt.NDArray[np.float64]
#: Share given to an empty bin, so that the logarithm stays finite.
PSI_FLOOR = 1e-4
#: Reference bins per feature (deciles).
BINS = 10
#: PSI above which a feature is reported as drifting.
LARGE_SHIFT = 0.25
#: Label of the score distribution in ``netfraud_feature_drift_psi``.
SCORE = "score"
#: Rows of a batch binned for the drift histograms at most: a larger batch
#: is thinned to every k-th row. PSI compares shares, which a thousand rows
#: per batch estimate well, and binning every row of a 5,000-row batch cost
#: about 2% of the loop.
SAMPLE_ROWS = 1_000


@dataclass(frozen=True)
class Histogram:
    """A reference histogram: inner bin edges and the share of rows per bin.

    Bin ``i`` holds values ``v`` with ``edges[i-1] <= v < edges[i]``; a last,
    separate bin holds missing values (NaN).

    Attributes:
        edges: Ascending, distinct inner edges (``k`` edges make ``k + 1`` bins).
        proportions: Share of rows in each bin, then the share missing (``k + 2``).
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    @classmethod
    def fit(cls, values: npt.ArrayLike, bins: int = BINS) -> Histogram | None:
        """Quantile edges and shares of ``values`` (``None`` if all are missing)."""
        v = np.asarray(values, dtype=np.float64)
        present = v[~np.isnan(v)]
        if present.size == 0:
            return None
        edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
        hist = cls(tuple(float(e) for e in edges), ())
        counts = hist.counts(v)
        return cls(hist.edges, tuple(float(c) for c in counts / counts.sum()))

    def counts(self, values: npt.ArrayLike) -> F64:
        """Rows of ``values`` per bin, missing last."""
        v = np.asarray(values, dtype=np.float64)
        missing = np.isnan(v)
        index = np.searchsorted(np.asarray(self.edges), v[~missing], side="right")
        counts = np.bincount(index, minlength=len(self.edges) + 1).astype(np.float64)
        return np.append(counts, float(missing.sum()))

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "proportions": list(self.proportions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        return cls(tuple(data["edges"]), tuple(data["proportions"]))


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Population stability index of ``actual`` against ``expected``.

    Both are counts or shares per bin, in the same bins; each is normalised
    to shares first. ``nan`` when ``actual`` is empty.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if a.sum() <= 0 or e.sum() <= 0:
        return float("nan")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_features(spec: FittedSpec) -> list[str]:
    """The spec's fields that are raw numbers (the ones drift is measured on)."""
    return [f.name for f in spec.fields if f.kind == "numeric"]


def reference_profile(
    spec: FittedSpec,
    raw: Mapping[str, npt.NDArray[Any]],
    fit_rows: npt.NDArray[np.int64],
    calibration_scores: F64,
) -> dict[str, Any]:
    """What drift is measured against, as plain data for bundle metadata.

    Args:
        spec: The fitted spec (its numeric fields are profiled).
        raw: Raw columns of the training rows (before transforms).
        fit_rows: Indexes of the rows the weights were fitted on.
        calibration_scores: Scores of the calibration rows.
    """
    features = {}
    for name in numeric_features(spec):
        if name not in raw:
            continue
        hist = Histogram.fit(np.asarray(raw[name], dtype=np.float64)[fit_rows])
        if hist is not None:
            features[name] = hist.to_dict()
    score = Histogram.fit(calibration_scores)
    return {"bins": BINS, "features": features, SCORE: score.to_dict() if score else None}


@dataclass(frozen=True)
class Reference:
    """A bundle's reference histograms, read back from its metadata."""

    features: dict[str, Histogram]
    score: Histogram | None

    @classmethod
    def of(cls, bundle: Bundle) -> Reference | None:
        """The bundle's reference, or ``None`` for a bundle trained without one."""
        data = bundle.metadata.get("reference")
        if not data:
            return None
        features = {k: Histogram.from_dict(v) for k, v in data.get("features", {}).items()}
        score = Histogram.from_dict(data[SCORE]) if data.get(SCORE) else None
        return cls(features, score)


def drift_report(
    reference: Reference, raw: Mapping[str, npt.NDArray[Any]], scores: F64 | None = None
) -> dict[str, float]:
    """PSI of each referenced feature (and of the score) over some rows, highest first."""
    out = {
        name: psi(hist.proportions, hist.counts(raw[name]))
        for name, hist in reference.features.items()
        if name in raw
    }
    if scores is not None and reference.score is not None:
        out[SCORE] = psi(reference.score.proportions, reference.score.counts(scores))
    return dict(sorted(out.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1.0)))


class DriftMonitor:
    """Fed by the loop with every scored batch; updates drift gauges and watches alerts.

    Every ``every_records`` records it sets ``netfraud_feature_drift_psi`` for
    each feature (and for the score distribution, label ``score``) from the
    rows seen since the last update (at most :data:`SAMPLE_ROWS` of each
    batch, evenly spaced). It warns ``alert_rate_jump`` once the
    share of rows at or above the threshold, over the last
    ``alert_window_records`` records, has stayed above ``alert_rate_factor``
    times the bundle's calibrated false-positive rate for
    ``alert_sustained_s`` seconds. Both start over when the model is swapped.

    Args:
        metrics: Where the gauges are.
        settings: The ``[drift]`` settings.
        clock: Monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        metrics: Metrics,
        settings: DriftSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.settings = settings or DriftSettings()
        self.clock = clock
        self.latest: dict[str, float] = {}
        self._version: str | None = None
        self._reset(None)

    def __call__(self, vectors: Vectors, scores: F64, bundle: Bundle) -> None:
        """Account one scored batch (``vectors`` and ``scores`` of the same rows)."""
        if bundle.version != self._version:
            self._reset(bundle)
        self._watch_alert_rate(scores, bundle)
        if self._reference is None:
            return
        step = max(1, -(-scores.size // SAMPLE_ROWS))  # ceiling division
        rows = np.arange(0, scores.size, step)
        settled = rows[~vectors.warming[rows]]  # context features of warming rows are incomplete
        for name, hist in self._reference.features.items():
            if name in vectors.raw:
                self._counts[name] += hist.counts(np.asarray(vectors.raw[name])[settled])
        if self._reference.score is not None:
            self._counts[SCORE] += self._reference.score.counts(scores[rows])
        self._seen += int(scores.size)
        if self._seen >= self.settings.every_records:
            self._publish()

    def _reset(self, bundle: Bundle | None) -> None:
        self._version = bundle.version if bundle else None
        self._reference = Reference.of(bundle) if bundle else None
        self._counts: dict[str, F64] = {}
        if self._reference is not None:
            for name, hist in self._reference.features.items():
                self._counts[name] = np.zeros(len(hist.proportions))
            if self._reference.score is not None:
                self._counts[SCORE] = np.zeros(len(self._reference.score.proportions))
        elif bundle is not None:
            log.info("drift_reference_missing", model_version=bundle.version)
        self._seen = 0
        self._window: deque[tuple[int, int]] = deque()
        self._window_rows = 0
        self._high_since: float | None = None
        self._warned = False
        self._drifting: set[str] = set()

    def _publish(self) -> None:
        assert self._reference is not None
        expected = {n: h.proportions for n, h in self._reference.features.items()}
        if self._reference.score is not None:
            expected[SCORE] = self._reference.score.proportions
        self.latest = {n: psi(expected[n], c) for n, c in self._counts.items()}
        for name, value in self.latest.items():
            if not np.isnan(value):
                self.metrics.drift_psi.labels(feature=name).set(value)
        drifting = {n for n, v in self.latest.items() if v > LARGE_SHIFT}
        if drifting - self._drifting:
            top = sorted(drifting, key=lambda n: -self.latest[n])[:5]
            log.warning(
                "feature_drift",
                model_version=self._version,
                psi={n: round(self.latest[n], 3) for n in top},
                records=self._seen,
            )
        self._drifting = drifting
        for counts in self._counts.values():
            counts[:] = 0
        self._seen = 0

    def _watch_alert_rate(self, scores: F64, bundle: Bundle) -> None:
        s = self.settings
        self._window.append((int(scores.size), int(np.sum(scores >= bundle.threshold))))
        self._window_rows += int(scores.size)
        while self._window and self._window_rows - self._window[0][0] >= s.alert_window_records:
            self._window_rows -= self._window.popleft()[0]
        if self._window_rows < s.alert_window_records:
            return  # too few records yet to judge a rate
        rate = sum(f for _, f in self._window) / self._window_rows
        limit = s.alert_rate_factor * bundle.calibration.target_fpr
        now = self.clock()
        if rate <= limit:
            if self._warned:
                log.info("alert_rate_normal", alert_rate=round(rate, 5), limit=limit)
            self._high_since, self._warned = None, False
            return
        if self._high_since is None:
            self._high_since = now
        if not self._warned and now - self._high_since >= s.alert_sustained_s:
            self._warned = True
            log.warning(
                "alert_rate_jump",
                alert_rate=round(rate, 5),
                limit=limit,
                target_fpr=bundle.calibration.target_fpr,
                window_records=self._window_rows,
                sustained_s=round(now - self._high_since, 1),
                model_version=bundle.version,
            )
