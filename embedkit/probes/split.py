"""The held-out split a probe scores on: stratified by class (by quantile bin for numbers),
seeded, so every dataset of one call is scored on the same rows."""

from __future__ import annotations

import numpy as np

from embedkit.errors import InputError

__all__ = ["NUMERIC_BINS", "held_out_split", "strata"]

#: numeric labels are stratified by this many quantile bins
NUMERIC_BINS = 10


def strata(values: np.ndarray, categorical: bool) -> np.ndarray:
    """The group of each row the split keeps in proportion: its class, or its quantile bin."""
    if categorical:
        return values
    edges = np.quantile(values, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def held_out_split(
    groups: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(train, test)``: ``test_size`` of each group held out (rounded, at
    least one row of a group of two or more, never its last row, so every class is
    trained on). The same groups and seed give the same split."""
    if not 0 < test_size < 1:
        raise InputError(f"test_size must lie between 0 and 1 (got {test_size})")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for group in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == group))
        n_test = min(max(round(test_size * len(rows)), 1), len(rows) - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
