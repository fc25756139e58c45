"""Labelled feature tables (NSL-KDD, UNSW-NB15, Zeek logs) as model input.

Evaluation data sets come as tables of their own columns rather than as
canonical flows. This module gives them the same treatment as flows:
log-scaled, robustly scaled numerics with missing indicators and one-hot
categoricals, fitted on the normal rows only, in a spec of record kind
``table`` that a bundle can carry. Label columns are never features.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.formats.datasets import LabelledTable
from features.spec import Field, FittedSpec, RawColumns, Vectors

NUMERIC = {"log": True, "clip": 5.0}
CATEGORICAL = {"max_values": 20, "min_count": 1}


def table_fields(table: LabelledTable) -> list[Field]:
    """One numeric field per numeric column, one one-hot field per categorical."""
    fields = [Field(c, "numeric", NUMERIC, c) for c in table.numeric_columns]
    return fields + [Field(c, "onehot", CATEGORICAL, c) for c in table.categorical_columns]


def table_raw(frame: pd.DataFrame) -> RawColumns:
    """Raw columns of a table frame, as arrays."""
    return {
        name: frame[name].to_numpy(dtype=np.float64)
        if pd.api.types.is_numeric_dtype(frame[name])
        else frame[name].astype(object).to_numpy()
        for name in frame.columns
    }


def fit_table(table: LabelledTable, fit_rows: npt.NDArray[np.int64]) -> tuple[FittedSpec, Vectors]:
    """Fit a table spec on ``fit_rows``; return it and every row's vectors."""
    raw = table_raw(table.frame)
    fields = table_fields(table)
    spec = FittedSpec.fit(fields, {k: v[fit_rows] for k, v in raw.items()}, (), "table")
    return spec, table_vectors(spec, table.frame)


def table_vectors(spec: FittedSpec, frame: pd.DataFrame) -> Vectors:
    """Model input for a table frame under a fitted table spec."""
    raw = table_raw(frame)
    return Vectors(spec.transform(raw), raw, np.zeros(len(frame), dtype=bool))
