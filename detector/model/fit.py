"""From a file of flows to a sealed, calibrated bundle.

Normal rows are split (seeded) into three disjoint parts: one to fit the
weights, one for early stopping and the per-feature error scale, one to
calibrate the threshold. Label columns are never features, and rows labelled
as attacks never reach the weights or the calibration.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.model.autoencoder import AutoencoderConfig
from detector.model.bundle import Bundle
from detector.model.scoring import error_scale_from
from detector.model.threshold import Calibration, measured_fpr
from detector.model.training import train_autoencoder
from features import context as ctx
from features.records import FlowBatch
from features.spec import Field, fit_vectorizer


@dataclass(frozen=True)
class TrainOptions:
    """How to split normal rows and calibrate.

    Attributes:
        target_fpr: Share of normal traffic the threshold should flag.
        validation_share: Normal rows held out for early stopping.
        calibration_share: Normal rows held out for the threshold.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        seed: Seeds the split and the model.
    """

    target_fpr: float = 0.01
    validation_share: float = 0.1
    calibration_share: float = 0.2
    device: str = "auto"
    seed: int = 0


def split_rows(
    n: int, normal: npt.NDArray[np.bool_], options: TrainOptions
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded disjoint (fit, validation, calibration) indexes of normal rows."""
    rows = np.flatnonzero(normal)
    rng = np.random.default_rng(options.seed)
    rng.shuffle(rows)
    n_val = max(int(len(rows) * options.validation_share), 1)
    n_cal = max(int(len(rows) * options.calibration_share), 10)
    if len(rows) < n_val + n_cal + 50:
        raise ValueError(
            f"only {len(rows)} normal rows; at least {n_val + n_cal + 50} are needed to "
            "train, validate and calibrate"
        )
    return rows[n_val + n_cal :], rows[:n_val], rows[n_val : n_val + n_cal]


def train_bundle(
    batch: FlowBatch,
    normal: npt.NDArray[np.bool_] | None = None,
    config: AutoencoderConfig | None = None,
    options: TrainOptions | None = None,
    fields: list[Field] | None = None,
    windows: tuple[float, ...] = ctx.DEFAULT_WINDOWS,
    progress: Callable[[int, float, float], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Bundle:
    """Fit the feature spec and autoencoder, calibrate, and seal a bundle.

    Args:
        batch: Flows in time order (context features are computed in order).
        normal: Rows that may be learned from (all rows when ``None``).
        config: Architecture and optimiser settings.
        options: Split, calibration and device.
        fields: Feature spec (the default flow spec when ``None``).
        windows: Context windows in seconds.
        progress: Called after each epoch with (epoch, train loss, validation loss).
        metadata: Extra facts to store (source file, format, ...).
    """
    options = options or TrainOptions()
    config = config or AutoencoderConfig(seed=options.seed)
    normal = np.ones(len(batch), bool) if normal is None else normal
    fit_rows, val_rows, cal_rows = split_rows(len(batch), normal, options)
    fit_mask = np.zeros(len(batch), bool)
    fit_mask[fit_rows] = True

    started = time.monotonic()
    vectorizer, vectors = fit_vectorizer(batch, fields, windows, fit_rows=fit_mask)
    x = vectors.matrix
    result = train_autoencoder(x[fit_rows], x[val_rows], config, options.device, progress)
    scale = error_scale_from(result.model, x[val_rows])

    bundle_scores = _scores(result.model, scale, x[cal_rows])
    calibration = Calibration.fit(bundle_scores, options.target_fpr)
    ts = batch.num("ts")
    meta = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_window": {"start": float(np.nanmin(ts)), "end": float(np.nanmax(ts))},
        "rows": {
            "fit": len(fit_rows),
            "validation": len(val_rows),
            "calibration": len(cal_rows),
            "excluded": int((~normal).sum()),
        },
        "data_fingerprint": fingerprint(x[fit_rows]),
        "epochs": result.epochs,
        "validation_loss": result.best_validation_loss,
        "train_seconds": round(time.monotonic() - started, 2),
        "target_fpr": options.target_fpr,
        "calibration_fpr": measured_fpr(bundle_scores, calibration.threshold),
        **(metadata or {}),
    }
    version = _version(meta["data_fingerprint"], config)
    return Bundle(version, vectorizer.spec, result.model, scale, calibration, meta)


def _scores(
    model: Any, scale: npt.NDArray[np.float32], rows: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    from detector.model.scoring import Scorer

    return Scorer(model, scale, "cpu").score(rows).scores


def fingerprint(matrix: npt.NDArray[np.float32]) -> str:
    """SHA-256 of the training matrix, to tell training sets apart."""
    return hashlib.sha256(np.ascontiguousarray(matrix).tobytes()).hexdigest()


def _version(data_fingerprint: str, config: AutoencoderConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    digest = hashlib.sha256(f"{data_fingerprint}{config.to_dict()}".encode()).hexdigest()[:8]
    return f"{stamp}-{digest}"
