"""The held-out split: stratified, seeded, every class trained on; numbers stratified by
quantile bin."""

from __future__ import annotations

import numpy as np
import pytest

from embedkit import InputError
from embedkit.probes.split import NUMERIC_BINS, held_out_split, strata


def test_each_class_is_held_out_in_proportion():
    groups = np.repeat([0, 1, 2], [200, 60, 8])
    train, test = held_out_split(groups, 0.25, seed=0)
    assert np.bincount(groups[test]).tolist() == [50, 15, 2]
    assert np.bincount(groups[train]).tolist() == [150, 45, 6]
    assert not set(train) & set(test) and len(train) + len(test) == len(groups)


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    groups = np.random.default_rng(0).integers(0, 3, 300)
    first = held_out_split(groups, 0.3, seed=4)
    assert all(
        np.array_equal(a, b) for a, b in zip(first, held_out_split(groups, 0.3, 4), strict=True)
    )
    assert not np.array_equal(first[1], held_out_split(groups, 0.3, seed=5)[1])


def test_small_classes_keep_a_training_row():
    groups = np.array([0] * 20 + [1, 1] + [2])
    train, test = held_out_split(groups, 0.9, seed=0)
    assert np.bincount(groups[train], minlength=3).tolist() == [2, 1, 1]  # never all held out
    assert np.bincount(groups[test], minlength=3).tolist() == [18, 1, 0]  # one row can't be tested


def test_numbers_are_stratified_by_quantile_bin():
    values = np.random.default_rng(0).exponential(size=1000)
    bins = strata(values, categorical=False)
    assert np.bincount(bins).tolist() == [100] * NUMERIC_BINS
    _, test = held_out_split(bins, 0.2, seed=0)
    assert np.bincount(bins[test]).tolist() == [20] * NUMERIC_BINS
    assert strata(np.array([2, 0, 1]), categorical=True).tolist() == [2, 0, 1]


@pytest.mark.parametrize("size", [0.0, 1.0, -0.1])
def test_the_test_size_lies_between_0_and_1(size):
    with pytest.raises(InputError, match="test_size must lie between 0 and 1"):
        held_out_split(np.zeros(10, int), size, seed=0)
