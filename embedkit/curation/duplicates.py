"""Near-duplicates: groups of rows whose latents lie within a threshold of each other.

Candidates come from the index, one batch of rows at a time: a range search where the
index returns exact distances (Flat, IVF-Flat), else the k nearest neighbours (an index
of codes — PQ, SQ without RFlat — returns approximate distances: the threshold is
widened by the codes' error). ``--auto`` reads the threshold off the 1-NN distances of a
k-NN pass and keeps that pass's close pairs, so it needs no second pass unless a check
says so (see :func:`_auto_pass`). Every candidate pair is then checked on the vectors
themselves, and the pairs within the threshold are joined into groups by union-find.
Nothing is ever N x N: memory holds one batch, one distance or two a row, and the links.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from embedkit.curation.groups import link_groups
from embedkit.curation.knn import (
    BATCH_ROWS,
    as_distance,
    curation_index,
    from_distance,
    self_neighbours,
)
from embedkit.curation.threshold import AutoThreshold, auto_threshold
from embedkit.errors import InputError
from embedkit.index.loaded import LoadedIndex, keeps_vectors
from embedkit.index.metric import prepare_vectors
from embedkit.index.select import progress_bar, stream_batches
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = [
    "DUPLICATES_DIR",
    "MAX_LINKS_PER_ROW",
    "near_duplicates",
    "nearest_distances",
    "threshold_distance",
]

#: more pairs than this per row (on average) from a range search means the threshold is
#: no near-duplicate threshold: refused rather than filling memory
MAX_LINKS_PER_ROW = 20
DUPLICATES_DIR = "duplicates"
#: float32 rounding: a unit vector's dot product with itself can read 1 - 1e-7, so a
#: distance within this of the threshold counts as within it (threshold 1.0 finds copies)
TOLERANCE = 1e-6


def threshold_distance(threshold: float, metric: str) -> float:
    """A threshold in the metric's unit (cosine similarity, squared L2) as a distance."""
    value = float(threshold)
    if metric == "cosine" and not -1.0 <= value <= 1.0:
        raise InputError(f"--threshold {threshold} is a cosine similarity: give one in [-1, 1]")
    if metric == "l2" and value < 0:
        raise InputError(f"--threshold {threshold} is a squared L2 distance: give one >= 0")
    return 1.0 - value if metric == "cosine" else value


def nearest_distances(
    ds: LatentDataset, loaded: LoadedIndex, batch_size: int = BATCH_ROWS, progress: bool = False
) -> np.ndarray:
    """Every row's distance to its nearest other row (dataset order)."""
    parts = [
        hits.distances[:, 0]
        for hits in self_neighbours(ds, loaded, 1, batch_size, progress, "1-NN distances")
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def near_duplicates(
    latents: str | Path | LatentDataset,
    threshold: float | None = None,
    auto: bool = False,
    k: int = 10,
    metric: str | None = None,
    index: LoadedIndex | None = None,
    batch_size: int = BATCH_ROWS,
    progress: bool = False,
) -> pd.DataFrame:
    """Groups of near-duplicate rows: DataFrame ``id, group, representative, distance``.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset`.
        threshold: rows are near-duplicates when their cosine similarity is >= it
            (metric cosine) or their squared L2 distance <= it (metric l2).
        auto: choose the threshold from the 1-NN distances instead (see
            :mod:`embedkit.curation.threshold`); ``attrs["auto"]`` says how.
        k: neighbours searched per row where the index has no exact range search.
        metric: default: the saved index's, else cosine (see :func:`curation_index`).
        index: search this :class:`LoadedIndex` instead of the saved one.

    Returns:
        One row per member of a group of two or more, groups numbered largest first.
        ``representative`` is the group's most linked member; ``distance`` the exact
        distance of the row to it (``1 - cosine`` or squared L2; 0 for itself).
        ``attrs``: ``metric``, ``threshold`` (in the metric's unit), ``distance_threshold``,
        ``auto`` (a dict, or None), ``rows``, ``search`` (how candidates were found), ``index``.
    """
    if auto == (threshold is not None):
        raise InputError("pass either a threshold (--threshold T) or auto=True (--auto)")
    ds = open_latents(latents)
    loaded = curation_index(ds, metric, index, progress)
    metric = loaded.metric
    chosen, found = None, None
    if auto:
        chosen, found = _auto_pass(ds, loaded, k, batch_size, progress)
        limit = chosen.distance
    else:
        limit = threshold_distance(threshold, metric)
    ranged = _has_exact_range_search(loaded)
    search = "range" if ranged else "knn"
    if found is None:
        found = _candidates(ds, loaded, limit, k, ranged, batch_size, progress)
    else:
        search = "knn, one pass with the 1-NN distances"
    nodes, a, b, vectors = _checked(ds, loaded, *found, limit)
    frame = _groups_frame(loaded, nodes, a, b, vectors)
    frame.attrs.update(
        metric=metric,
        threshold=from_distance(limit, metric),
        distance_threshold=limit,
        auto=None if chosen is None else chosen.as_dict(),
        rows=len(ds),
        search=search,
        index=f"{loaded.info.kind} ({loaded.info.factory})",
    )
    return frame


def _has_exact_range_search(loaded: LoadedIndex) -> bool:
    """A CPU ``Flat`` or ``IVF-Flat`` index: its range search returns exact distances.
    (faiss 1.15's HNSW range search aborts the process on a batch of queries.)"""
    index = faiss.downcast_index(loaded.index)
    flat = isinstance(index, faiss.IndexFlat) or type(index) is faiss.IndexIVFFlat
    return flat and not loaded.on_gpu


def _auto_pass(
    ds: LatentDataset, loaded: LoadedIndex, k: int, batch_size: int, progress: bool
) -> tuple[AutoThreshold, tuple[np.ndarray, np.ndarray] | None]:
    """The ``--auto`` threshold from one k-NN pass, and the pairs within it found on the
    way — None when they need a second pass: an index of codes (approximate distances),
    a provisional bound that fell below the threshold, or a row whose k-th neighbour is
    within it (its group may be larger than k + 1).

    The threshold never exceeds a tenth of the median 1-NN distance, so the pass keeps the
    pairs within a fifth of the median 1-NN distance of the batches read so far."""
    nearest, kth, kept, lowest = [], [], [], np.inf
    exact = keeps_vectors(loaded.index) and not loaded.on_gpu
    for hits in self_neighbours(ds, loaded, k, batch_size, progress, "near-duplicates"):
        nearest.append(hits.distances[:, 0])
        kth.append(hits.distances[:, -1])
        bound = float(np.median(np.concatenate(nearest))) / 5
        lowest = min(lowest, bound)
        near = (hits.distances <= bound) & (hits.found >= 0)
        rows = np.broadcast_to(hits.rows[:, None], near.shape)
        kept.append((rows[near], hits.found[near], hits.distances[near]))
    chosen = auto_threshold(np.concatenate(nearest) if nearest else np.zeros(0))
    limit = chosen.distance + TOLERANCE
    if not exact or limit > lowest or (np.concatenate(kth) <= limit).any():
        return chosen, None
    a, b, d = (np.concatenate(part) for part in zip(*kept, strict=True))
    return chosen, _unique_pairs([(a[d <= limit], b[d <= limit])], loaded.ntotal)


def _unique_pairs(
    pairs: list[tuple[np.ndarray, np.ndarray]], ntotal: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each pair once, ``a < b``."""
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    low = np.concatenate([np.minimum(a, b) for a, b in pairs]).astype(np.int64)
    high = np.concatenate([np.maximum(a, b) for a, b in pairs]).astype(np.int64)
    keys = np.unique(low * ntotal + high)
    return keys // ntotal, keys % ntotal


def _candidates(
    ds: LatentDataset,
    loaded: LoadedIndex,
    limit: float,
    k: int,
    ranged: bool,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (faiss rows, ``a < b``, each once) within ``limit``."""
    pairs = (
        _range_pairs(ds, loaded, limit, batch_size, progress)
        if ranged
        else _knn_pairs(ds, loaded, limit, k, batch_size, progress)
    )
    found, total = [], 0
    for a, b in pairs:
        found.append((a, b))
        total += len(a)
        if ranged and total > MAX_LINKS_PER_ROW * max(len(ds), 1000):  # k-NN: <= k a row
            raise InputError(
                f"the threshold {from_distance(limit, loaded.metric):.6g} links over "
                f"{MAX_LINKS_PER_ROW} rows per row of {ds.path}: too loose for "
                "near-duplicates; tighten it (or use --auto)"
            )
    return _unique_pairs(found, loaded.ntotal)


def _range_pairs(
    ds: LatentDataset, loaded: LoadedIndex, limit: float, batch_size: int, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs from a range search of each batch (the query row itself left out)."""
    # faiss keeps similarities > radius (cosine), distances < radius (l2)
    cosine = loaded.metric == "cosine"
    radius = 1.0 - limit - 2 * TOLERANCE if cosine else limit + 2 * TOLERANCE
    with progress_bar(progress, len(ds), "near-duplicates") as bar:
        for _, ids, vectors in stream_batches(ds, loaded.metric, batch_size):
            rows = loaded.rows_of(ids)
            lims, _, found = loaded.index.range_search(vectors, radius)
            query = np.repeat(rows, np.diff(lims).astype(np.int64))
            other = found != query
            bar.update(len(ids))
            yield query[other], found[other]


def _knn_pairs(
    ds: LatentDataset, loaded: LoadedIndex, limit: float, k: int, batch_size: int, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs among each row's k nearest neighbours within ``limit``, or within ``limit``
    widened by the code error of an index of codes (its distances are approximate; the
    pairs are checked on the vectors afterwards)."""
    cut = limit + TOLERANCE
    if not (keeps_vectors(loaded.index) and not loaded.on_gpu):
        sample = next(ds.iter_batches(batch_size=1024)).vectors
        cut = _widened(cut, loaded, sample)
    for hits in self_neighbours(ds, loaded, k, batch_size, progress, "near-duplicates"):
        near = (hits.distances <= cut) & (hits.found >= 0)
        query = np.broadcast_to(hits.rows[:, None], near.shape)
        yield query[near], hits.found[near]


def _widened(limit: float, loaded: LoadedIndex, sample: np.ndarray) -> float:
    """``limit`` plus what the codes can move a distance: twice the largest gap between a
    sampled row and its decoded code, ``e``; a distance ``d`` can read as ``d + e``
    (cosine) or ``(sqrt(d) + e)^2`` (l2). Infinite when faiss cannot decode the codes."""
    vectors = prepare_vectors(sample, loaded.metric, "latents")
    try:
        decoded = loaded.index.sa_decode(loaded.index.sa_encode(vectors))
    except RuntimeError:
        return np.inf
    error = 2 * float(np.linalg.norm(decoded - vectors, axis=1).max(initial=0.0))
    return limit + error if loaded.metric == "cosine" else (np.sqrt(limit) + error) ** 2


def _checked(
    ds: LatentDataset, loaded: LoadedIndex, a: np.ndarray, b: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pairs whose exact distance is within ``limit``: the rows involved, each pair as
    positions into them, and their vectors (prepared as the index's were)."""
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    vectors = loaded.stored_vectors(nodes) if len(nodes) else None
    if vectors is None:
        raw = ds.vectors_of(loaded.ids[nodes].tolist())
        vectors = prepare_vectors(raw, loaded.metric, f"latents in {ds.path}")
    pa, pb = inverse[: len(a)], inverse[len(a) :]
    keep = _distance(vectors[pa], vectors[pb], loaded.metric) <= limit + TOLERANCE
    used, positions = np.unique(np.concatenate([pa[keep], pb[keep]]), return_inverse=True)
    count = int(keep.sum())
    return nodes[used], positions[:count], positions[count:], vectors[used]


def _distance(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return as_distance(np.einsum("ij,ij->i", x, y), metric)
    return np.einsum("ij,ij->i", x - y, x - y)


def _groups_frame(
    loaded: LoadedIndex, nodes: np.ndarray, a: np.ndarray, b: np.ndarray, vectors: np.ndarray
) -> pd.DataFrame:
    """One row per grouped row, sorted by group then distance to the representative."""
    groups = link_groups(a, b, len(nodes))
    rep = groups.representative
    frame = pd.DataFrame(
        {
            "id": loaded.ids[nodes].astype(object),
            "group": groups.group,
            "representative": loaded.ids[nodes[rep]].astype(object),
            "distance": _distance(vectors, vectors[rep], loaded.metric).astype(np.float32),
        }
    )
    frame.loc[rep == np.arange(len(nodes)), "distance"] = 0.0
    return frame.sort_values(["group", "distance", "id"], kind="stable", ignore_index=True)
