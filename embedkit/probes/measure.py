"""``probe()``: what latents encode, measured. For each dataset, block of the vector and
label column: held-out k-NN and linear-probe accuracy (R² for numbers) beside the
majority-class (mean-predictor) baseline, as one table."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.curation.knn import dataset_metric
from embedkit.errors import InputError
from embedkit.index.metric import check_metric
from embedkit.probes.align import MIN_ROWS, Latents, aligned
from embedkit.probes.blocks import vector_blocks
from embedkit.probes.knn import knn_predict, nearest_training_rows
from embedkit.probes.linear import MAX_TRAIN_ROWS, linear_predict, training_subsample
from embedkit.probes.split import held_out_split, strata
from embedkit.probes.targets import CATEGORICAL, Target, target
from embedkit.store.dataset import LatentDataset

__all__ = ["TABLE_COLUMNS", "probe", "score"]

TABLE_COLUMNS = [
    "column",
    "kind",
    "measure",
    "dataset",
    "block",
    "dim",
    "n_train",
    "n_test",
    "baseline",
    "knn",
    "linear",
]

#: a class needs this many rows to be probed (some to train on, cross-validate, and test)
MIN_CLASS_ROWS = 5

Split = tuple[np.ndarray, np.ndarray]


def score(truth: np.ndarray, predicted: np.ndarray, categorical: bool) -> float:
    """Accuracy, or R² (1 - residual / total sum of squares about the truth's mean)."""
    if categorical:
        return float(np.mean(truth == predicted))
    total = float(((truth - truth.mean()) ** 2).sum())
    return 1.0 - float(((truth - predicted) ** 2).sum()) / total if total else float("nan")


def _split(found: Target, test_size: float, seed: int) -> Split:
    """Positions (among the aligned rows) of the labeled rows to train on and to test on;
    rows of a class too rare to train and test on are left out (with a warning)."""
    rows = np.flatnonzero(found.present)
    if len(rows) < len(found.values):
        warnings.warn(
            f"label column {found.column!r}: {len(found.values) - len(rows):,} of "
            f"{len(found.values):,} rows have no label; left out of its probe",
            stacklevel=3,
        )
    categorical = found.kind == CATEGORICAL
    if categorical:
        counts = np.bincount(found.values[rows], minlength=len(found.classes))
        rare = np.flatnonzero((counts > 0) & (counts < MIN_CLASS_ROWS))
        if len(rare):
            rows = rows[~np.isin(found.values[rows], rare)]
            warnings.warn(
                f"label column {found.column!r}: left out {int(counts[rare].sum())} rows of "
                f"{len(rare)} classes with fewer than {MIN_CLASS_ROWS} rows "
                f"(e.g. {found.classes[rare[0]]!r})",
                stacklevel=3,
            )
    if len(rows) < MIN_ROWS or len(np.unique(found.values[rows])) < 2:
        raise InputError(
            f"label column {found.column!r} has {len(rows)} usable labeled rows the datasets "
            f"share (in {len(np.unique(found.values[rows]))} classes or values); a probe "
            f"needs at least {MIN_ROWS} in 2 or more"
        )
    train, test = held_out_split(strata(found.values[rows], categorical), test_size, seed)
    return rows[train], rows[test]


def _scores(x: np.ndarray, found: Target, split: Split, k: int, metric: str, seed: int) -> dict:
    """Baseline, k-NN and linear scores of one block ``x`` on one label column."""
    train, test = split
    categorical = found.kind == CATEGORICAL
    y_train, y_test = found.values[train], found.values[test]
    if categorical:
        baseline = np.full(len(test), np.bincount(y_train).argmax())
    else:
        baseline = np.full(len(test), y_train.mean())
    neighbours = nearest_training_rows(x[train], x[test], k, metric)
    fit = train[training_subsample(len(train), seed)]
    linear = linear_predict(x[fit], found.values[fit], x[test], categorical)
    return {
        "baseline": score(y_test, baseline, categorical),
        "knn": score(y_test, knn_predict(neighbours, y_train, categorical), categorical),
        "linear": score(y_test, linear, categorical),
    }


def _row(dataset: str, block: str, dim: int, found: Target, split: Split, scores: dict) -> dict:
    categorical = found.kind == CATEGORICAL
    return {
        "dataset": dataset,
        "block": block,
        "dim": dim,
        "column": found.column,
        "kind": found.kind,
        "measure": "accuracy" if categorical else "R²",
        "n_train": len(split[0]),
        "n_test": len(split[1]),
        **scores,
    }


def _attrs(k: int, test_size: float, seed: int, metrics: dict, splits: list[Split]) -> dict:
    """How the table was measured (kept in ``DataFrame.attrs``)."""
    largest = max(len(train) for train, _ in splits)
    return {
        "k": k,
        "test_size": test_size,
        "seed": seed,
        "metric": metrics,
        "linear_train_rows": min(largest, MAX_TRAIN_ROWS),
        "linear_subsampled": largest > MAX_TRAIN_ROWS,
    }


def probe(
    latents: Latents | Sequence[Latents],
    columns: Sequence[str] | None = None,
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str | None = None,
    categorical: Sequence[str] = (),
    k: int = 10,
    test_size: float = 0.25,
    seed: int = 0,
    metric: str | None = None,
) -> pd.DataFrame:
    """What the latents encode: one row per dataset, block and label column.

    Rows are the ids every dataset shares; each column is split once (stratified,
    ``test_size`` held out, seeded), so all datasets and blocks are scored on the same
    rows. ``knn``: majority vote (mean for numbers) of the ``k`` nearest training rows,
    exact, in ``metric`` (default: the dataset's index metric, else cosine). ``linear``:
    standardised logistic (ridge) regression, its strength cross-validated on the training
    rows (:mod:`embedkit.probes.linear`). ``baseline``: the majority class (the training
    mean). Accuracy for classes, R² for numbers: the dtype decides (``categorical`` names
    columns of numbers to treat as classes). A backbone that records segments (timm
    ``layers=``) is scored per stage and whole (``block``).

    Example:
        >>> embedkit.probe(["pixels/", "vae/"], ["shape", "color"])
    """
    many = [latents] if isinstance(latents, (str, Path, LatentDataset)) else list(latents)
    columns = [columns] if isinstance(columns, str) else columns
    categorical = [categorical] if isinstance(categorical, str) else categorical
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer (got {k!r})")
    if not 0 < test_size < 1:
        raise InputError(f"test_size must lie between 0 and 1 (got {test_size})")
    check_metric(metric)
    data = aligned(many, columns, labels, id_column)
    unknown = sorted(set(categorical) - set(data.labels.columns))
    if unknown:
        raise InputError(f"categorical column {unknown[0]!r} is not among the probed columns")
    targets = [target(c, data.labels[c], c in categorical) for c in data.labels.columns]
    splits = [_split(t, test_size, seed) for t in targets]
    metrics = [dataset_metric(ds, metric) for ds in data.datasets]
    blocks = [vector_blocks(ds.backbone, ds.dim) for ds in data.datasets]
    rows = []  # grouped by column, so a column's datasets and blocks sit together
    for found, split in zip(targets, splits, strict=True):
        for name, vectors, parts, how in zip(
            data.names, data.vectors, blocks, metrics, strict=True
        ):
            for block in parts:
                measured = _scores(block.of(vectors), found, split, k, how, seed)
                rows.append(_row(name, block.name, block.width, found, split, measured))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    metric_of = dict(zip(data.names, metrics, strict=True))
    table.attrs.update(_attrs(k, test_size, seed, metric_of, splits))
    return table
