"""The model bundle: everything needed to score, sealed by a checksum.

A bundle is a directory holding ``weights.pt`` (the autoencoder's state
dict), ``bundle.json`` (feature spec and schema hash, architecture,
per-feature error scale, calibration, training metadata) and ``SHA256SUMS``.
Nothing outside it is needed to score, and nothing in it changes after it is
written: a new model is a new bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from detector.errors import BundleError
from detector.model.autoencoder import Autoencoder, AutoencoderConfig
from detector.model.scoring import Scorer
from detector.model.threshold import Calibration
from features.spec import FittedSpec

FORMAT_VERSION = 1
_FILES = ("bundle.json", "weights.pt")


@dataclass
class Bundle:
    """A trained, calibrated model and its feature spec.

    Attributes:
        version: Unique, sortable name (UTC time of training plus a digest).
        spec: The fitted feature spec.
        model: The trained autoencoder.
        error_scale: Per-feature normal reconstruction error (width,).
        calibration: Threshold, severity bands and risk table.
        metadata: Training window, data fingerprint, rows, metrics, format.
    """

    version: str
    spec: FittedSpec
    model: Autoencoder
    error_scale: npt.NDArray[np.float32]
    calibration: Calibration
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def scorer(self, device: str = "cpu") -> Scorer:
        """A scorer for this bundle's model on ``device``."""
        return Scorer(self.model, self.error_scale, device)

    def save(self, directory: Path) -> Path:
        """Write the bundle into a new directory (which must not exist)."""
        directory.mkdir(parents=True, exist_ok=False)
        buffer = io.BytesIO()
        torch.save(self.model.state_dict(), buffer)
        (directory / "weights.pt").write_bytes(buffer.getvalue())
        document = {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "schema": self.spec.schema(),
            "schema_hash": self.spec.schema_hash,
            "model": {"width": self.model.width, "config": self.model.config.to_dict()},
            "error_scale": self.error_scale.tolist(),
            "calibration": self.calibration.to_dict(),
            "metadata": self.metadata,
        }
        (directory / "bundle.json").write_text(json.dumps(document, indent=1))
        sums = "".join(f"{_sha256(directory / n)}  {n}\n" for n in _FILES)
        (directory / "SHA256SUMS").write_text(sums)
        return directory

    @classmethod
    def load(cls, directory: Path) -> Bundle:
        """Read and verify a bundle.

        Raises:
            BundleError: A file is missing, a checksum differs, or the
                content does not describe a consistent model.
        """
        verify_checksums(directory)
        try:
            doc = json.loads((directory / "bundle.json").read_text())
            if doc.get("format_version") != FORMAT_VERSION:
                raise BundleError(
                    f"{directory}: bundle format {doc.get('format_version')} is not "
                    f"{FORMAT_VERSION}; retrain the model with this netfraud version"
                )
            spec = FittedSpec.from_dict(doc["spec"])
            if spec.schema_hash != doc["schema_hash"]:
                raise BundleError(f"{directory}: feature spec does not match its schema hash")
            config = AutoencoderConfig.from_dict(doc["model"]["config"])
            model = Autoencoder(int(doc["model"]["width"]), config)
            state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            model.eval()
            return cls(
                version=doc["version"],
                spec=spec,
                model=model,
                error_scale=np.asarray(doc["error_scale"], dtype=np.float32),
                calibration=Calibration.from_dict(doc["calibration"]),
                metadata=doc.get("metadata", {}),
            )
        except BundleError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError, OSError) as exc:
            raise BundleError(f"{directory}: not a usable model bundle: {exc}") from exc


def verify_checksums(directory: Path) -> None:
    """Check every file against ``SHA256SUMS``.

    Raises:
        BundleError: Naming the missing or altered file.
    """
    sums_file = directory / "SHA256SUMS"
    if not sums_file.is_file():
        raise BundleError(f"{directory}: no SHA256SUMS; not a model bundle")
    expected: dict[str, str] = {}
    for line in sums_file.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    for name in _FILES:
        path = directory / name
        if name not in expected or not path.is_file():
            raise BundleError(f"{directory}: {name} is missing")
        if _sha256(path) != expected[name]:
            raise BundleError(f"{directory}: checksum of {name} does not match; bundle is corrupt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
