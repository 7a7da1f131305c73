"""Nearest-neighbour search over latent datasets: by id, by vector, or by image.

Results are one pandas DataFrame, one row per (query, neighbour)::

    query | rank | id | score (cosine) or distance (l2) | <carried columns of the neighbour>

* ``score`` is the cosine similarity (higher is closer) when the metric is cosine;
  ``distance`` is the squared L2 distance (lower is closer) when it is l2.
* ``query`` is the query id, the query's row number for ``vectors=``, or the image path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.index.build import build_index
from embedkit.index.info import INFO_FILE, index_dir, view_fingerprint
from embedkit.index.load import load_index
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import check_metric, prepare_vectors
from embedkit.index.persist import read_info
from embedkit.index.queries import as_list, image_vectors, query_vectors
from embedkit.index.results import results_frame
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.format import missing_ids_message

__all__ = ["clear_index_cache", "neighbors"]

_CACHE_SIZE = 4
_cache: OrderedDict[tuple, tuple[str, LoadedIndex]] = OrderedDict()


def clear_index_cache() -> None:
    """Forget indexes kept in memory between :func:`neighbors` calls."""
    _cache.clear()


def _cached(key: tuple, fingerprint: str, make) -> LoadedIndex:
    hit = _cache.get(key)
    if hit is not None and hit[0] == fingerprint:
        _cache.move_to_end(key)
        return hit[1]
    loaded = make()
    _cache[key] = (fingerprint, loaded)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return loaded


def _resolve_index(
    ds: LatentDataset,
    index: LoadedIndex | Literal["exact"] | None,
    metric: str | None,
    rebuild: bool,
) -> LoadedIndex:
    """The given index, the saved one (cached), or an exact in-memory Flat index (cached)."""
    check_metric(metric)
    if isinstance(index, LoadedIndex):
        if metric is not None and metric != index.metric:
            raise InputError(
                f"the given index uses metric {index.metric} but metric={metric!r} was "
                f"requested; build one with metric={metric!r} or omit metric"
            )
        if index.info.dim != ds.dim:
            raise InputError(f"the given index has dim {index.info.dim}, the latents {ds.dim}")
        return index
    if index not in (None, "exact"):
        raise InputError(f"index={index!r} is not a LoadedIndex, 'exact' or None")
    root = str(ds.path.resolve())
    fingerprint = view_fingerprint(ds)
    info = read_info(ds) if index is None and ds.expression is None else None
    if info is not None:
        if metric is not None and metric != info.metric:
            raise InputError(
                f"the index in {index_dir(ds)} uses metric {info.metric} but metric={metric!r} "
                f"was requested; re-run `embedkit index {ds.path} --metric {metric}` or omit "
                "--metric"
            )
        stamp = (index_dir(ds) / INFO_FILE).stat().st_mtime_ns
        key = (root, "saved", stamp)
        if rebuild or info.fingerprint == fingerprint:
            return _cached(key, fingerprint, lambda: load_index(ds, rebuild=rebuild))
        load_index(ds)  # raises the one-line "stale index" error
    metric = metric or "cosine"
    key = (root, str(ds.expression), "exact", metric)
    return _cached(
        key,
        fingerprint,
        lambda: build_index(ds, metric=metric, kind="flat", progress=False, save=False),
    )


# -- queries ---------------------------------------------------------------------------
# -- the API -------------------------------------------------------------------------------
def neighbors(
    latents: str | Path | LatentDataset,
    ids: str | Sequence[str] | None = None,
    vectors: np.ndarray | Sequence[float] | None = None,
    images: str | Path | Sequence[str | Path] | Any | None = None,
    k: int = 10,
    exclude_self: bool = True,
    metric: str | None = None,
    index: LoadedIndex | Literal["exact"] | None = None,
    nprobe: int | None = None,
    columns: Sequence[str] | None = None,
    rebuild: bool = False,
) -> pd.DataFrame:
    """The k nearest neighbours of latent ids, vectors or images, as a DataFrame.

    Give exactly one of ``ids``, ``vectors`` or ``images``. All queries go to faiss in
    one batched search; neighbour metadata is looked up vectorized.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset` (a filtered view
            searches only its rows, exactly).
        ids: one id or several; their stored vectors are the queries.
        vectors: one ``[D]`` vector or ``[N, D]`` vectors.
        images: image path(s) or PIL image(s), encoded with the backbone that made the latents.
        k: neighbours per query.
        exclude_self: for ``ids`` queries, drop the query row itself from its results.
        metric: ``cosine`` or ``l2``; default: the saved index's metric, else cosine.
            Asking for another metric than the saved index's is an error.
        index: a :class:`LoadedIndex` from :func:`build_index`/:func:`load_index`,
            ``"exact"`` for brute force, or ``None``: the saved index if there is one,
            else exact search (indexes are cached between calls).
        nprobe: override the tuned ``nprobe`` of an IVF index for this call.
        columns: carried columns to return for each neighbour (default: all of them).
        rebuild: rebuild a stale saved index instead of raising.

    Returns:
        Columns ``query, rank, id`` then ``score`` (cosine similarity) for cosine or
        ``distance`` (squared L2) for l2, then the carried columns; ``n_queries * k`` rows
        (fewer only when an approximate index finds fewer than k).

    Example:
        >>> neighbors("latents/", ids=["img_001"], k=5)
        >>> neighbors("latents/", images="cat.jpg", k=10, columns=["source", "label"])
    """
    given = [
        name
        for name, v in (("ids", ids), ("vectors", vectors), ("images", images))
        if v is not None
    ]
    if len(given) != 1:
        raise InputError(
            "pass exactly one of ids=, vectors= or images= "
            f"({'none' if not given else ' and '.join(given)} given)"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    ds = open_latents(latents)
    loaded = _resolve_index(ds, index, metric, rebuild)
    metric = loaded.metric

    wanted = _carried(ds, columns)
    raw, labels, self_rows = _queries(ds, loaded, ids, vectors, images)
    queries = prepare_vectors(raw, metric, "query vectors", check=vectors is None)
    if ds.normalized and metric == "l2" and images is not None:
        import faiss

        faiss.normalize_L2(queries)  # image queries must look like the stored latents
    if not exclude_self:
        self_rows = None
    found, dist, keep = _search(loaded, queries, k, self_rows, _nprobe_params(loaded, nprobe))
    return results_frame(loaded, labels, found, dist, keep, wanted)


def _queries(
    ds: LatentDataset, loaded: LoadedIndex, ids: Any, vectors: Any, images: Any
) -> tuple[np.ndarray, Any, np.ndarray | None]:
    """Raw query vectors, a label per query, and (for ids) each query's own faiss row."""
    if ids is not None:
        query_ids = [str(i) for i in as_list(ids)]
        if not query_ids:
            raise InputError("ids= is empty; pass at least one id")
        self_rows = loaded.rows_of(np.asarray(query_ids, dtype=object))
        if (self_rows < 0).any():
            absent = [query_ids[i] for i in np.flatnonzero(self_rows < 0)]
            raise InputError(missing_ids_message(absent, ds.path))
        return ds.vectors_of(query_ids), query_ids, self_rows
    if vectors is not None:
        raw = query_vectors(vectors, ds.dim)
        return raw, np.arange(len(raw)), None
    items = as_list(images)
    if not items:
        raise InputError("images= is empty; pass at least one image path")
    raw, labels = image_vectors(ds, items)
    return raw, labels, None


def _search(
    loaded: LoadedIndex,
    queries: np.ndarray,
    k: int,
    self_rows: np.ndarray | None,
    params: dict[str, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, distances, valid)`` of the k nearest, each query's own row left out."""
    extra = 1 if self_rows is not None else 0
    dist, found = loaded.search(queries, min(k + extra, loaded.ntotal), params)
    if self_rows is None:
        found, dist = found[:, :k], dist[:, :k]
        return found, dist, found >= 0
    drop = (found == self_rows[:, None]) | (found < 0)
    order = np.argsort(drop, axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)[:, :k]
    dist = np.take_along_axis(dist, order, axis=1)[:, :k]
    return found, dist, ~np.take_along_axis(drop, order, axis=1)[:, :k]


def _carried(ds: LatentDataset, columns: Sequence[str] | None) -> list[str]:
    available = [c for c in ds.columns if c != "id"]
    if columns is None:
        return available
    columns = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in columns if c not in available and c != "id"]
    if unknown:
        raise InputError(
            f"no column {unknown[0]!r} in {ds.path}; columns: {', '.join(available) or 'none'}"
        )
    return [c for c in columns if c != "id"]


def _nprobe_params(loaded: LoadedIndex, nprobe: int | None) -> dict[str, float] | None:
    if nprobe is None:
        return None
    if "nprobe" not in loaded.info.params and loaded.info.kind not in ("ivf", "ivfpq"):
        raise InputError(
            f"nprobe applies to IVF indexes; this index is {loaded.info.kind} "
            f"({loaded.info.factory})"
        )
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise InputError(f"nprobe must be an integer >= 1, got {nprobe!r}")
    return {"nprobe": int(nprobe)}
