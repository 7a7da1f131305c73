"""The rows a probe scores: the latent datasets joined on id (the ids all of them share),
with the label columns they carry or a labels table joined as ``embedkit attributes`` does."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.algebra.labels import labeled
from embedkit.errors import InputError
from embedkit.probes.targets import NOT_LABELS, label_columns
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["MIN_ROWS", "Aligned", "aligned", "carried_label_columns", "dataset_names"]

#: a probe needs at least this many rows shared by the datasets (and labeled)
MIN_ROWS = 20

Latents = str | Path | LatentDataset


@dataclass(frozen=True)
class Aligned:
    """The datasets' vectors and the labels, row by row on the shared ``ids``."""

    names: list[str]
    datasets: list[LatentDataset]
    ids: np.ndarray
    vectors: list[np.ndarray]
    labels: pd.DataFrame


def dataset_names(datasets: Sequence[LatentDataset]) -> list[str]:
    """How the table names each dataset: its folder's name, or its path when two share one."""
    short = [ds.path.name for ds in datasets]
    if len(set(short)) == len(short):
        return short
    return [str(ds.path) for ds in datasets]


def carried_label_columns(latents: Latents) -> list[str]:
    """The columns the latents carry that a probe can score (see :func:`label_columns`)."""
    ds = open_latents(latents)
    carried = [c for c in ds.columns if c not in NOT_LABELS]
    if not carried:
        return []
    return label_columns(ds.to_table(carried).to_pandas())


def _columns(first: LatentDataset, columns: Sequence[str] | None, labels: object) -> list[str]:
    if columns is not None:
        if not columns:
            raise InputError("no label column to probe: name at least one (--column)")
        return list(dict.fromkeys(columns))
    if labels is not None:
        raise InputError("name the columns of the labels table to probe (--column, columns=[...])")
    found = carried_label_columns(first)
    if not found:
        raise InputError(
            f"latents {first.path} carry no label column to probe (columns: "
            f"{', '.join(first.columns)}); pass --labels TABLE --column NAME"
        )
    return found


def _shared_rows(datasets: list[LatentDataset], first_ids: np.ndarray) -> list[np.ndarray]:
    """Per dataset, the positions of the ids every dataset holds (first dataset's order)."""
    ids_of = [pd.Index(first_ids.astype(str))]
    ids_of += [pd.Index(ds.ids().astype(str)) for ds in datasets[1:]]
    for ds, ids in zip(datasets, ids_of, strict=True):
        if not ids.is_unique:
            repeated = ids[ids.duplicated()][0]
            raise InputError(f"{ds.path} holds id {repeated!r} more than once; ids must be unique")
    shared = ids_of[0]
    for ids in ids_of[1:]:
        shared = shared[shared.isin(ids)]
    sizes = [len(ids) for ids in ids_of]
    if len(shared) < max(MIN_ROWS, min(sizes) // 2):
        held = ", ".join(
            f"{ds.path} {n:,} (ids like {ids[0]!r})"
            for ds, n, ids in zip(datasets, sizes, ids_of, strict=True)
        )
        raise InputError(
            f"the latent datasets share {len(shared):,} ids ({held}); probe datasets "
            "embedded from the same images, whose ids match"
        )
    left_out = [
        f"{n - len(shared):,} of {ds.path}"
        for ds, n in zip(datasets, sizes, strict=True)
        if n > len(shared)
    ]
    if left_out:
        warnings.warn(
            f"probing the {len(shared):,} ids all datasets share; left out: {', '.join(left_out)}",
            stacklevel=3,
        )
    return [ids.get_indexer(shared) for ids in ids_of]


def aligned(
    latents: Sequence[Latents],
    columns: Sequence[str] | None = None,
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str | None = None,
) -> Aligned:
    """The shared rows of ``latents`` with their label ``columns`` (NaN where missing).

    Labels come from ``labels`` joined on id (as :func:`embedkit.algebra.labels.labeled`
    does), else from the columns the first dataset carries; ``columns=None`` takes every
    carried label column."""
    datasets = [open_latents(x) for x in latents]
    if not datasets:
        raise InputError("no latent dataset to probe")
    wanted = _columns(datasets[0], columns, labels)
    first = labeled(datasets[0], wanted, labels, id_column, dropna=False)
    rows = _shared_rows(datasets, first.ids)
    vectors = [first.vectors[rows[0]]]
    vectors += [ds.to_numpy()[r] for ds, r in zip(datasets[1:], rows[1:], strict=True)]
    return Aligned(
        dataset_names(datasets),
        datasets,
        first.ids[rows[0]],
        vectors,
        first.labels.iloc[rows[0]].reset_index(drop=True),
    )
