"""Fitted column transforms: raw values in, scaled float32 columns out.

Each transform is fitted on training data, turns one raw input column into
one or more output columns, can say what a reconstructed output means in the
input's own units (for explanations), and round-trips through a plain dict so
that it can live in a model bundle.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd

F32 = npt.NDArray[np.float32]
Raw = npt.NDArray[Any]

OTHER = "<other>"
MISSING = "<missing>"


def _finite(values: Raw) -> npt.NDArray[np.float64]:
    return np.asarray(values, dtype=np.float64)


@dataclass
class Numeric:
    """``log1p`` (optional), robust scaling, clipping, and a missing indicator.

    Missing values become the training median plus an indicator column set
    to 1, so the model sees that a value was absent rather than zero.
    """

    kind: ClassVar[str] = "numeric"
    log: bool = True
    clip: float = 8.0
    center: float = 0.0
    scale: float = 1.0
    indicator: bool = False

    def fit(self, values: Raw) -> Numeric:
        x = self._pre(_finite(values))
        present = x[~np.isnan(x)]
        if present.size:
            q25, q50, q75 = np.percentile(present, [25, 50, 75])
            spread = q75 - q25
            if spread <= 0:
                spread = float(np.std(present))
            self.center = float(q50)
            self.scale = float(spread) if spread > 0 else 1.0
        self.indicator = bool(np.isnan(x).any())
        return self

    def width(self) -> int:
        return 2 if self.indicator else 1

    def transform(self, values: Raw) -> F32:
        x = self._pre(_finite(values))
        missing = np.isnan(x)
        z = np.clip((x - self.center) / self.scale, -self.clip, self.clip)
        z[missing] = 0.0
        if not self.indicator:
            return z.astype(np.float32)[:, None]
        return np.stack([z, missing.astype(np.float64)], axis=1).astype(np.float32)

    def expected(self, reconstructed: F32) -> float | str:
        """The input value the model expected, in original units."""
        x = float(reconstructed[0]) * self.scale + self.center
        return float(np.sign(x) * np.expm1(abs(x))) if self.log else x

    def _pre(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if not self.log:
            return x
        # Signed, so that negative values (deltas, offsets) keep their order.
        return np.sign(x) * np.log1p(np.abs(x))

    def to_dict(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "clip": self.clip,
            "center": self.center,
            "scale": self.scale,
            "indicator": self.indicator,
        }


@dataclass
class OneHot:
    """One-hot of the most frequent values seen in training, plus ``<other>``.

    ``None``/NaN is its own category, ``<missing>``. When ``buckets`` is set,
    values outside the vocabulary are hashed into that many extra columns
    instead of sharing one ``<other>`` column (for large vocabularies such as
    ports or services).
    """

    kind: ClassVar[str] = "onehot"
    max_values: int = 16
    min_count: int = 5
    buckets: int = 0
    vocabulary: list[str] = field(default_factory=list)

    def fit(self, values: Raw) -> OneHot:
        counts = Counter(_as_text(values))
        common = [v for v, c in counts.most_common(self.max_values) if c >= self.min_count]
        self.vocabulary = sorted(common)
        return self

    def labels(self) -> list[str]:
        extra = [f"#{i}" for i in range(self.buckets)] if self.buckets else [OTHER]
        return self.vocabulary + extra

    def width(self) -> int:
        return len(self.labels())

    def transform(self, values: Raw) -> F32:
        # Map each distinct value once; a batch has far fewer of them than rows.
        uniques, inverse = _unique(values)
        index = {v: i for i, v in enumerate(self.vocabulary)}
        n_vocab = len(self.vocabulary)
        column_of_unique = np.array(
            [index.get(u, n_vocab + self._bucket(u)) for u in _as_text(uniques)],
            dtype=np.int64,
        )
        out = np.zeros((len(values), self.width()), dtype=np.float32)
        if len(values):
            out[np.arange(len(values)), column_of_unique[inverse]] = 1.0
        return out

    def _bucket(self, value: str) -> int:
        return zlib.crc32(value.encode()) % self.buckets if self.buckets else 0

    def expected(self, reconstructed: F32) -> float | str:
        return self.labels()[int(np.argmax(reconstructed))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_values": self.max_values,
            "min_count": self.min_count,
            "buckets": self.buckets,
            "vocabulary": self.vocabulary,
        }


@dataclass
class Bits:
    """A bitmask (such as TCP flags) as one column per bit, plus missing."""

    kind: ClassVar[str] = "bits"
    names: list[str] = field(default_factory=list)

    def fit(self, values: Raw) -> Bits:
        return self

    def width(self) -> int:
        return len(self.names) + 1

    def transform(self, values: Raw) -> F32:
        x = _finite(values)
        missing = np.isnan(x)
        ints = np.where(missing, 0, x).astype(np.int64)
        bits = (ints[:, None] >> np.arange(len(self.names))) & 1
        return np.concatenate([bits, missing[:, None]], axis=1).astype(np.float32)

    def expected(self, reconstructed: F32) -> float | str:
        on = [n for n, v in zip(self.names, reconstructed, strict=False) if v > 0.5]
        return "|".join(on) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names}


@dataclass
class TimeOfDay:
    """Hour of the day (UTC) as a point on a circle: sine and cosine."""

    kind: ClassVar[str] = "time_of_day"

    def fit(self, values: Raw) -> TimeOfDay:
        return self

    def width(self) -> int:
        return 2

    def transform(self, values: Raw) -> F32:
        seconds = np.nan_to_num(_finite(values) % 86_400.0)
        angle = seconds * (2 * math.pi / 86_400.0)
        return np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)

    def expected(self, reconstructed: F32) -> float | str:
        angle = math.atan2(float(reconstructed[0]), float(reconstructed[1]))
        return round((angle % (2 * math.pi)) * 24 / (2 * math.pi), 1)

    def to_dict(self) -> dict[str, Any]:
        return {}


Transform = Numeric | OneHot | Bits | TimeOfDay
_KINDS: dict[str, type[Transform]] = {t.kind: t for t in (Numeric, OneHot, Bits, TimeOfDay)}


def make(kind: str, params: dict[str, Any]) -> Transform:
    """Build a transform from its kind and parameters (as stored in a bundle)."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown transform kind {kind!r}; known: {sorted(_KINDS)}") from None
    return cls(**params)


def _as_text(values: Raw) -> list[str]:
    out: list[str] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(MISSING)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def _unique(values: Raw) -> tuple[Raw, npt.NDArray[np.intp]]:
    """Distinct values and, for each input, the index of its distinct value.

    Hash-based (no sort); a missing value (``None`` or ``NaN``) is a distinct
    value of its own, which :func:`_as_text` names.
    """
    codes, uniques = pd.factorize(np.asarray(values), use_na_sentinel=False)
    return np.asarray(uniques), codes.astype(np.intp, copy=False)
