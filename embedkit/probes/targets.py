"""What a probe predicts: a label column, categorical or numeric by its dtype, and which
carried columns are labels worth probing when none are named."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedkit.errors import InputError

__all__ = [
    "CATEGORICAL",
    "MAX_CLASSES",
    "NOT_LABELS",
    "NUMERIC",
    "Target",
    "label_columns",
    "target",
]

CATEGORICAL, NUMERIC = "categorical", "numeric"
#: at most this many classes for a column chosen automatically (more look like names)
MAX_CLASSES = 100
#: carried columns that are bookkeeping, never labels
NOT_LABELS = frozenset({"id", "source", "path"})


@dataclass(frozen=True)
class Target:
    """One label column, per aligned row: class codes (``-1`` where missing) with their
    names, or numbers (NaN where missing)."""

    column: str
    kind: str
    values: np.ndarray
    classes: tuple[str, ...] = ()

    @property
    def present(self) -> np.ndarray:
        """Which rows have a label."""
        return self.values >= 0 if self.kind == CATEGORICAL else ~np.isnan(self.values)


def kind_of(values: pd.Series) -> str | None:
    """``categorical`` (bool, text, category), ``numeric`` (int, float) or None."""
    if pd.api.types.is_bool_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype):
        return CATEGORICAL
    if pd.api.types.is_numeric_dtype(values):
        return NUMERIC
    kind = pd.api.types.infer_dtype(values, skipna=True)
    return CATEGORICAL if kind in ("string", "boolean", "empty") else None


def target(column: str, values: pd.Series, as_category: bool = False) -> Target:
    """The ``Target`` of a label column; a one-line error when it cannot be probed."""
    kind = CATEGORICAL if as_category else kind_of(values)
    if kind is None:
        raise InputError(
            f"label column {column!r} holds {pd.api.types.infer_dtype(values, skipna=True)} "
            "values; a probe needs classes (text, bool) or numbers"
        )
    if kind == NUMERIC:
        numbers = values.astype("float64").to_numpy()
        if len(np.unique(numbers[~np.isnan(numbers)])) < 2:
            raise InputError(f"label column {column!r} holds fewer than 2 distinct numbers")
        return Target(column, NUMERIC, numbers)
    codes, names = pd.factorize(values.astype(object), sort=True, use_na_sentinel=True)
    if len(names) < 2:
        raise InputError(f"label column {column!r} holds fewer than 2 classes ({list(names)})")
    return Target(column, CATEGORICAL, codes.astype(np.int64), tuple(map(str, names)))


def label_columns(frame: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """The columns of ``frame`` a probe can score: numbers with at least 2 values, and
    classes (2 to ``MAX_CLASSES``, and rows at least twice the classes, so not names)."""
    found = []
    for column in frame.columns:
        if column in NOT_LABELS or column in exclude:
            continue
        values = frame[column]
        distinct = values.nunique(dropna=True)
        most = {NUMERIC: len(values), CATEGORICAL: min(MAX_CLASSES, values.count() // 2)}
        if 2 <= distinct <= most.get(kind_of(values), 0):
            found.append(column)
    return found
