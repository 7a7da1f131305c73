"""The index every curation job streams through, and the k nearest neighbours of every row.

:func:`curation_index` picks the index: the dataset's saved one (its metric decides), else
an exact ``Flat`` one built in memory for up to ``EXACT_ROWS`` rows, else one built with
``auto`` and saved, as ``embedkit index`` would. :func:`self_neighbours` then searches
every row of the dataset against it, one batch at a time: memory holds one batch of
vectors and its results, never an N x N matrix. Distances are *distances* here, lower is
closer: ``1 - cosine similarity`` for cosine, the squared L2 distance for l2.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from embedkit.errors import InputError
from embedkit.index.build import build_index
from embedkit.index.info import view_fingerprint
from embedkit.index.load import load_index
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import check_metric
from embedkit.index.persist import read_info
from embedkit.index.select import progress_bar, stream_batches
from embedkit.store.dataset import LatentDataset

__all__ = [
    "BATCH_ROWS",
    "EXACT_ROWS",
    "Neighbours",
    "as_distance",
    "curation_index",
    "dataset_metric",
    "from_distance",
    "self_neighbours",
]

#: up to this many rows, an index built for a curation job is exact (Flat) and in memory
EXACT_ROWS = 50_000
#: query rows per faiss search
BATCH_ROWS = 16_384


class Neighbours(NamedTuple):
    """The k nearest other rows of one batch of rows (faiss rows of the index)."""

    ids: np.ndarray  # [B] the batch's latent ids, dataset order
    rows: np.ndarray  # [B] their faiss rows
    found: np.ndarray  # [B, k] faiss rows of the neighbours, nearest first (-1: none)
    distances: np.ndarray  # [B, k] distances (inf where none)


def dataset_metric(ds: LatentDataset, metric: str | None = None) -> str:
    """``metric`` if given, else the saved index's metric, else ``cosine``."""
    check_metric(metric)
    if metric is not None:
        return metric
    info = read_info(ds) if ds.expression is None else None
    return info.metric if info is not None else "cosine"


def as_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores as distances: ``1 - similarity`` (cosine) or squared L2, never < 0."""
    out = 1.0 - raw if metric == "cosine" else np.array(raw, dtype=np.float32)
    return np.maximum(out, 0.0).astype(np.float32)


def from_distance(distance: float, metric: str) -> float:
    """A distance back in the metric's own unit: the cosine similarity, or squared L2."""
    return 1.0 - distance if metric == "cosine" else distance


def curation_index(
    ds: LatentDataset,
    metric: str | None = None,
    index: LoadedIndex | None = None,
    progress: bool = False,
) -> LoadedIndex:
    """The index to search: ``index`` (checked), the saved one, or one built now.

    Without a saved index, up to ``EXACT_ROWS`` rows get an exact in-memory ``Flat``
    index; more get one chosen by ``auto`` and saved in ``<latents>/index/`` (a filtered
    view's stays in memory), so the next job reuses it."""
    check_metric(metric)
    if index is not None:
        if index.info.fingerprint != view_fingerprint(ds):
            raise InputError(
                f"the given index was not built from {ds.path} as it is now; "
                f"rebuild it with `embedkit index {ds.path}`"
            )
        loaded = index
    elif ds.expression is None and read_info(ds) is not None:
        loaded = load_index(ds)  # a stale index is refused with a one-line error
    elif len(ds) <= EXACT_ROWS:  # brute force is cheap: nothing to measure or save
        metric = metric or "cosine"
        return build_index(ds, metric=metric, kind="flat", progress=False, save=False)
    else:
        return build_index(ds, metric=metric or "cosine", progress=progress)
    if metric is not None and metric != loaded.metric:
        raise InputError(
            f"the index of {ds.path} uses metric {loaded.metric}, not {metric}; rebuild it "
            f"with `embedkit index {ds.path} --metric {metric}` or omit the metric"
        )
    return loaded


def self_neighbours(
    ds: LatentDataset,
    loaded: LoadedIndex,
    k: int,
    batch_size: int = BATCH_ROWS,
    progress: bool = False,
    desc: str = "neighbours",
) -> Iterator[Neighbours]:
    """The ``k`` nearest other rows of every row of ``ds``, one batch at a time.

    Each row is searched with ``k + 1`` neighbours and itself is dropped wherever it
    comes (an exact copy may rank before it, an approximate index may miss it)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    metric = loaded.metric
    wanted = min(int(k) + 1, loaded.ntotal)
    with progress_bar(progress, len(ds), desc) as bar:
        for _, ids, vectors in stream_batches(ds, metric, batch_size):
            rows = loaded.rows_of(ids)
            if (rows < 0).any():
                raise InputError(
                    f"the index of {ds.path} lacks some of its rows; "
                    f"rebuild it with `embedkit index {ds.path}`"
                )
            raw, found = loaded.search(vectors, wanted)
            found, distances = _drop_self(found, as_distance(raw, metric), rows, int(k))
            bar.update(len(ids))
            yield Neighbours(ids, rows, found, distances)


def _drop_self(
    found: np.ndarray, distances: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` results that are not the query row itself nor missing (-1)."""
    drop = (found == rows[:, None]) | (found < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(found, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    gone = np.take_along_axis(drop, order, axis=1)
    found[gone] = -1
    distances[gone] = np.inf
    if found.shape[1] < k:  # fewer rows in the index than k + 1
        pad = k - found.shape[1]
        found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
        distances = np.pad(distances, ((0, 0), (0, pad)), constant_values=np.inf)
    return found, distances
