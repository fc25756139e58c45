"""``netfraud train``: a file of flows in, a bundle in the registry out."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from detector.model.autoencoder import AutoencoderConfig
from detector.model.fit import TrainOptions, train_bundle, train_table_bundle
from detector.model.registry import Registry
from detector.settings import Settings
from detector.tools.evaluate import TABLE_FORMATS, load_table
from detector.tools.pcap import capture_rows, is_capture
from detector.tools.progress import progress_bar
from features.formats import get_adapter
from features.records import FlowBatch

#: Label column and the value that marks normal rows, per format.
LABEL_DEFAULTS = {
    "netfraud": ("label", "benign"),
    "zeek": ("label", "Benign"),
    "nsl-kdd": ("label", "normal"),
    "unsw-nb15": ("label", "0"),
    "cicflowmeter": ("label", "BENIGN"),
}


def load_labelled(
    path: Path, fmt: str, label_column: str | None = None, benign: str | None = None
) -> tuple[FlowBatch, npt.NDArray[np.bool_] | None]:
    """Read a file in time order; return it and its normal-row mask (if labelled).

    Raises:
        ValueError: An explicitly named label column is absent.
    """
    batch = capture_rows(path, fmt) if is_capture(path) else get_adapter(fmt).read_file(path)
    order = np.argsort(batch.num("ts"), kind="stable")
    batch = batch.take(order)
    column, value = LABEL_DEFAULTS.get(fmt, ("label", "benign"))
    column, value = label_column or column, benign or value
    if column not in batch.extras:
        if label_column:
            raise ValueError(
                f"{path}: no label column {label_column!r}; found {sorted(batch.extras)}"
            )
        return batch, None
    labels = batch.extras[column].astype(str)
    return batch, labels == value


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    fmt = args.format or settings.topics.format
    config = AutoencoderConfig(seed=args.seed)
    if args.epochs:
        config = AutoencoderConfig(seed=args.seed, max_epochs=args.epochs)
    options = TrainOptions(target_fpr=args.target_fpr, device=settings.model.device, seed=args.seed)
    metadata = {"source": str(args.data), "format": fmt}
    with progress_bar("training", config.max_epochs) as advance:
        progress = lambda epoch, train, val: advance(1)
        if fmt in TABLE_FORMATS:
            # These data sets carry their own labels and columns: fit on their
            # normal rows, in their own feature space.
            table = load_table(args.data, fmt)
            bundle = train_table_bundle(table, config, options, progress, metadata)
        else:
            batch, normal = load_labelled(args.data, fmt, args.label_column, args.benign)
            bundle = train_bundle(
                batch, normal, config, options, progress=progress, metadata=metadata
            )
    registry = Registry(settings.model.registry)
    registry.publish(bundle)
    if not args.no_promote:
        registry.promote(bundle.version)
    meta = bundle.metadata
    print(
        f"model {bundle.version}: {meta['rows']['fit']} rows fitted, "
        f"{meta['epochs']} epochs, threshold {bundle.threshold:.4g} "
        f"(calibrated for {args.target_fpr:.2%} false positives), "
        f"{'in service' if not args.no_promote else 'stored, not promoted'} in {registry.root}"
    )
    return 0
