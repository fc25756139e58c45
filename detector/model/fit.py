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

from detector.lifecycle.drift import reference_profile
from detector.model.autoencoder import AutoencoderConfig
from detector.model.bundle import Bundle
from detector.model.scoring import error_scale_from
from detector.model.threshold import Calibration, measured_fpr
from detector.model.training import train_autoencoder
from features import context as ctx
from features.formats.datasets import LabelledTable
from features.packets import DEFAULT_WINDOWS as PACKET_WINDOWS
from features.packets import fit_packet_vectorizer, record_kind
from features.records import FlowBatch
from features.spec import Field, FittedSpec, Vectors, fit_vectorizer
from features.tabular import fit_table


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
    windows: tuple[float, ...] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    metadata: dict[str, Any] | None = None,
    record: str | None = None,
) -> Bundle:
    """Fit the feature spec and autoencoder, calibrate, and seal a bundle.

    Args:
        batch: Flows in time order (context features are computed in order).
        normal: Rows that may be learned from (all rows when ``None``).
        config: Architecture and optimiser settings.
        options: Split, calibration and device.
        fields: Feature spec (the default flow spec when ``None``).
        windows: Context windows (flows) or time scales (packets) in seconds;
            the record kind's defaults when ``None``.
        progress: Called after each epoch with (epoch, train loss, validation loss).
        metadata: Extra facts to store (source file, format, ...).
        record: ``flow`` or ``packet`` rows; from ``metadata["format"]`` when ``None``.
    """
    options = options or TrainOptions()
    normal = np.ones(len(batch), bool) if normal is None else normal
    splits = split_rows(len(batch), normal, options)
    fit_mask = np.zeros(len(batch), bool)
    fit_mask[splits[0]] = True
    started = time.monotonic()
    record = record or record_kind((metadata or {}).get("format"))
    spec, vectors = _fit_features(batch, fields, windows, fit_mask, record)
    ts = batch.num("ts")
    window = {"start": float(np.nanmin(ts)), "end": float(np.nanmax(ts))}
    return seal(
        spec,
        vectors,
        splits,
        normal,
        config,
        options,
        progress,
        {"training_window": window, **(metadata or {})},
        started,
    )


def _fit_features(
    batch: FlowBatch,
    fields: list[Field] | None,
    windows: tuple[float, ...] | None,
    fit_mask: npt.NDArray[np.bool_],
    record: str,
) -> tuple[FittedSpec, Vectors]:
    """Fit the vectorizer of the record kind; return its spec and the vectors."""
    if record == "packet":
        packets, vectors = fit_packet_vectorizer(batch, fields, windows or PACKET_WINDOWS, fit_mask)
        return packets.spec, vectors
    flows, vectors = fit_vectorizer(batch, fields, windows or ctx.DEFAULT_WINDOWS, fit_mask)
    return flows.spec, vectors


def train_table_bundle(
    table: LabelledTable,
    config: AutoencoderConfig | None = None,
    options: TrainOptions | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Bundle:
    """Like :func:`train_bundle`, for a labelled feature table (NSL-KDD, UNSW-NB15,
    Zeek logs read as tables): fitted on the rows not labelled as attacks."""
    options = options or TrainOptions()
    normal = ~table.label
    splits = split_rows(len(table), normal, options)
    started = time.monotonic()
    spec, vectors = fit_table(table, splits[0])
    return seal(spec, vectors, splits, normal, config, options, progress, metadata or {}, started)


def seal(
    spec: FittedSpec,
    vectors: Vectors,
    splits: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]],
    normal: npt.NDArray[np.bool_],
    config: AutoencoderConfig | None,
    options: TrainOptions,
    progress: Callable[[int, float, float], None] | None,
    metadata: dict[str, Any],
    started: float,
) -> Bundle:
    """Train on the fit rows, scale errors on the validation rows, calibrate on
    the calibration rows, and seal everything in a bundle."""
    fit_rows, val_rows, cal_rows = splits
    config = config or AutoencoderConfig(seed=options.seed)
    x = vectors.matrix
    result = train_autoencoder(x[fit_rows], x[val_rows], config, options.device, progress)
    scale = error_scale_from(result.model, x[val_rows])
    bundle_scores = _scores(result.model, scale, x[cal_rows])
    calibration = Calibration.fit(bundle_scores, options.target_fpr)
    meta = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
        # Histograms of the training snapshot, for drift (detector.lifecycle.drift).
        "reference": reference_profile(spec, vectors.raw, fit_rows, bundle_scores),
        **metadata,
    }
    version = _version(meta["data_fingerprint"], config)
    return Bundle(version, spec, result.model, scale, calibration, meta)


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
