"""Nearest-neighbour search over latent datasets: by id, by vector, or by image.

Results are one pandas DataFrame, one row per (query, neighbour)::

    query | rank | id | score (cosine) or distance (l2) | <carried columns of the neighbour>

* ``score`` is the cosine similarity (higher is closer) when the metric is cosine;
  ``distance`` is the squared L2 distance (lower is closer) when it is l2.
* ``query`` is the query id, the query's row number for ``vectors=``, or the image path.

With ``radius=`` every neighbour within the radius comes back instead of k
(:mod:`embedkit.index.radius`). A filtered view (``ds.filter(...)``) is searched with the
whole dataset's index and a selector over its rows, or scanned exactly when it is small
(:mod:`embedkit.index.resolve`, :mod:`embedkit.index.filtered`); the frame's ``attrs``
say which.

A call costs what faiss costs, ~0.3 ms and the result table: the opened dataset, its
fingerprint, the parsed ``index.json`` and the loaded index are kept between calls
(:mod:`embedkit.index.search_cache`) and re-checked with one ``os.stat`` per part (and
one of ``index.json``), never by reading Parquet footers; an id's vector is read back
from an index that stores vectors; the frame is built from its blocks. See
docs/search.md, "What a call costs".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.index.filtered import selector_search
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import prepare_vectors
from embedkit.index.queries import as_list, image_vectors, query_vectors
from embedkit.index.radius import check_radius, radius_search
from embedkit.index.resolve import Resolved, resolve_index, whole_dataset
from embedkit.index.results import hits_frame, results_frame
from embedkit.index.search_cache import RACY_NS, clear_index_cache, open_dataset
from embedkit.store.dataset import LatentDataset
from embedkit.store.format import missing_ids_message

__all__ = ["RACY_NS", "clear_index_cache", "neighbors"]


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
    radius: float | None = None,
    update: bool = False,
) -> pd.DataFrame:
    """The k nearest neighbours (or all within ``radius``) of latent ids, vectors or
    images, as a DataFrame.

    Give exactly one of ``ids``, ``vectors`` or ``images``. All queries go to faiss in
    one batched search; neighbour metadata is looked up vectorized.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset`. A filtered view
            (``ds.filter(color="red")``) searches only its rows: with the whole
            dataset's index and a selector, or exactly when the view is small (``attrs``
            say which); query ids may be any rows of the dataset.
        ids: one id or several; their stored vectors are the queries.
        vectors: one ``[D]`` vector or ``[N, D]`` vectors.
        images: image path(s) or PIL image(s), encoded with the backbone that made the latents.
        k: neighbours per query (ignored with ``radius``).
        exclude_self: for ``ids`` queries, drop the query row itself from its results.
        metric: ``cosine`` or ``l2``; default: the saved index's metric, else cosine.
            Asking for another metric than the saved index's is an error.
        index: a :class:`LoadedIndex` from :func:`build_index`/:func:`load_index`,
            ``"exact"`` for brute force, or ``None``: the saved index if there is one,
            else exact search (indexes are cached between calls).
        nprobe: override the tuned ``nprobe`` of an IVF index for this call.
        columns: carried columns to return for each neighbour (default: all of them).
        rebuild: rebuild a stale saved index instead of raising.
        radius: return every neighbour scoring ``>= radius`` (cosine similarity) or at
            a squared L2 distance ``<= radius`` (l2), closest first, instead of k.
        update: bring a stale saved index up to date (in place when it still fits its
            choice, see :func:`~embedkit.index.update.update_index`) instead of raising.

    Returns:
        Columns ``query, rank, id`` then ``score`` (cosine similarity) for cosine or
        ``distance`` (squared L2) for l2, then the carried columns; ``n_queries * k`` rows
        (fewer only when an approximate index finds fewer than k). ``attrs``:
        ``searched_on`` (``"gpu"``/``"cpu"``) and ``search_note`` (why not on a GPU
        that could be used), ``search`` (``"index"``, ``"exact"``, ``"index+selector"``
        or ``"exact subset scan"``), ``search_reason`` and ``search_params`` (filtered
        views), ``radius_method`` (``"range search"`` or ``"k-NN of growing k"``).

    Example:
        >>> neighbors("latents/", ids=["img_001"], k=5)
        >>> neighbors("latents/", images="cat.jpg", k=10, columns=["source", "label"])
        >>> neighbors(open_latents("latents/").filter(color="red"), ids=["img_001"])
        >>> neighbors("latents/", ids=["img_001"], radius=0.95)   # near-duplicates
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
    ds, stats = open_dataset(latents)
    count = _count(ids, vectors, images)
    plan = resolve_index(ds, index, metric, rebuild, update, stats, queries=count)
    loaded = plan.loaded
    if radius is not None:
        radius = check_radius(radius, loaded.metric)
    wanted = _carried(ds, columns)
    queries, labels, self_rows = _queries(ds, plan, ids, vectors, images)
    if not exclude_self:
        self_rows = None
    params = {**(plan.params or {}), **(_nprobe_params(loaded, nprobe) or {})}
    if radius is not None:
        hits = radius_search(loaded, queries, radius, self_rows, params, plan.subset)
        frame = _radius_frame(loaded, labels, hits, wanted)
        frame.attrs["radius_method"] = hits.method
    else:
        found, dist, keep = _search(plan, queries, k, self_rows, params or None)
        frame = results_frame(loaded, labels, found, dist, keep, wanted)
    frame.attrs.update(
        searched_on=loaded.searched_on, search_note=loaded.search_note, search=plan.method,
        search_reason=plan.reason, search_params=plan.params,
    )  # fmt: skip
    return frame


def _count(ids: Any, vectors: Any, images: Any) -> int:
    """How many queries a call makes (before they are read or encoded)."""
    if vectors is not None:
        shape = np.shape(vectors)
        return int(shape[0]) if len(shape) == 2 else 1
    return len(as_list(ids if ids is not None else images))


def _queries(
    ds: LatentDataset, plan: Resolved, ids: Any, vectors: Any, images: Any
) -> tuple[np.ndarray, Any, np.ndarray | None]:
    """Query vectors as faiss takes them (float32, normalized for cosine), a label per
    query, and (for ids) each query's own faiss row. An id's vector is read back from the
    index when it holds exactly the latents' rows as they are now and keeps vectors
    (Flat, IVF-Flat, HNSW, RFlat); else from the Parquet parts with one filtered scan
    (of the whole dataset: a filtered view's queries may lie outside it)."""
    loaded, metric = plan.loaded, plan.loaded.metric
    if ids is not None:
        query_ids = [str(i) for i in as_list(ids)]
        if not query_ids:
            raise InputError("ids= is empty; pass at least one id")
        self_rows = loaded.rows_of(query_ids)
        outside = self_rows < 0
        if outside.any() and ds.expression is None:
            absent = [query_ids[i] for i in np.flatnonzero(outside)]
            raise InputError(missing_ids_message(absent, ds.path))
        stored = loaded.stored_vectors(self_rows) if plan.current and not outside.any() else None
        if stored is None:  # prepared as the index's own rows were
            stored = prepare_vectors(
                whole_dataset(ds).vectors_of(query_ids), metric, "query vectors"
            )
        return stored, query_ids, self_rows
    if vectors is not None:
        raw = query_vectors(vectors, ds.dim)  # checked finite
        return prepare_vectors(raw, metric, "query vectors", check=False), np.arange(len(raw)), None
    items = as_list(images)
    if not items:
        raise InputError("images= is empty; pass at least one image path")
    raw, labels = image_vectors(ds, items)
    queries = prepare_vectors(raw, metric, "query vectors")
    if ds.normalized and metric == "l2":
        import faiss

        faiss.normalize_L2(queries)  # image queries must look like the stored latents
    return queries, labels, None


def _search(
    plan: Resolved,
    queries: np.ndarray,
    k: int,
    self_rows: np.ndarray | None,
    params: dict[str, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, distances, valid)`` of the k nearest, each query's own row left out."""
    loaded = plan.loaded
    extra = 1 if self_rows is not None else 0
    wanted = min(k + extra, loaded.ntotal)
    if plan.subset is not None:
        dist, found = selector_search(loaded, queries, wanted, plan.subset, params or {})
    else:
        dist, found = loaded.search(queries, wanted, params)
    if self_rows is None:
        found, dist = found[:, :k], dist[:, :k]
        return found, dist, found >= 0
    if (found[:, 0] == self_rows).all():  # the usual case: each query row comes first
        found, dist = found[:, 1:], dist[:, 1:]
        return found, dist, found >= 0
    drop = (found == self_rows[:, None]) | (found < 0)
    order = np.argsort(drop, axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)[:, :k]
    dist = np.take_along_axis(dist, order, axis=1)[:, :k]
    return found, dist, ~np.take_along_axis(drop, order, axis=1)[:, :k]


def _radius_frame(loaded: LoadedIndex, labels: Any, hits: Any, wanted: list[str]) -> pd.DataFrame:
    """The result table of a radius search: every hit, ranked within its query."""
    counts = np.diff(hits.lims)
    which_query = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(len(hits.rows), dtype=np.int64) - np.repeat(hits.lims[:-1], counts) + 1
    return hits_frame(loaded, labels, which_query, rank, hits.rows, hits.dist, wanted)


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
