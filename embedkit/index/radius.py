"""Threshold search: every neighbour within a radius, for deduplication-style queries.

``radius`` is in the unit of the result column: a cosine similarity (every row scoring
``>= radius``) or a squared L2 distance (every row at ``<= radius``). A CPU ``Flat`` or
``IVF…,Flat`` index answers with faiss' ``range_search`` (exact distances; an IVF index
looks in the lists its ``nprobe`` probes, as a k-NN search does). Other kinds — HNSW
(whose range search faiss 1.15 aborts on a batch of queries), codes, refine stages —
answer with k-NN searches of growing k (64, then 4x until the k-th neighbour lies beyond
the radius or every row was returned). A filter's selector applies to both.

An approximate index tuned for recall@k misses neighbours deeper than k: when a query
has D > k neighbours within the radius, its search parameter is raised to what recall@D
needs, as for a filter keeping k/D of the rows (see :mod:`embedkit.index.filtered`), and
then doubled until the hits stop growing (by at most 1 %, ``SETTLED``) or it reaches its
cap: each step is one more search of the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from embedkit.errors import InputError
from embedkit.index.filtered import Subset, filtered_params, param_cap, search_parameters
from embedkit.index.loaded import LoadedIndex
from embedkit.index.tune import ladders

__all__ = ["START_K", "RangeHits", "check_radius", "radius_search", "supports_range"]

#: the first k of the growing k-NN search
START_K = 64
GROWTH = 4
#: the hits of an approximate index have settled when doubling its parameter adds this
#: share of them or less
SETTLED = 0.01


@dataclass
class RangeHits:
    """Neighbours within the radius: those of query ``q`` are ``rows[lims[q]:lims[q+1]]``,
    closest first, with their ``dist`` (similarity or squared distance); ``method`` says
    how they were found."""

    lims: np.ndarray
    dist: np.ndarray
    rows: np.ndarray
    method: str


def check_radius(radius: Any, metric: str) -> float:
    """``radius`` as a float, or a one-line error."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating, np.integer)):
        raise InputError(f"radius must be a number, got {radius!r}")
    if not np.isfinite(radius) or (metric == "l2" and radius < 0):
        unit = "a squared L2 distance >= 0" if metric == "l2" else "a cosine similarity"
        raise InputError(f"radius must be {unit}, got {radius!r}")
    return float(radius)


def supports_range(index: faiss.Index) -> bool:
    """Whether faiss' range search of ``index`` returns exact distances and is safe."""
    inner = faiss.downcast_index(index)
    return isinstance(inner, faiss.IndexFlat) or type(inner) is faiss.IndexIVFFlat


def _within(dist: np.ndarray, radius: float, similarity: bool) -> np.ndarray:
    return dist >= radius if similarity else dist <= radius


def _range(
    index: faiss.Index, queries: np.ndarray, radius: float, similarity: bool, sp: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss' range search, bounds included (faiss keeps only strictly better ones)."""
    edge = np.nextafter(np.float32(radius), np.float32(-np.inf if similarity else np.inf))
    lims, dist, rows = index.range_search(queries, float(edge), params=sp)
    return lims.astype(np.int64), dist, rows


def _deeper(loaded: LoadedIndex, params: dict[str, float], share: float) -> dict[str, float]:
    """``params`` with the primary parameter raised to what a filter keeping ``share``
    needs (recall at depth k/share), never lowered."""
    steps = ladders(loaded.index, loaded.info.k)
    if not steps or share >= 1:
        return params
    name = steps[0][0]
    raised = filtered_params(loaded, share)[name]
    return {**params, name: max(params.get(name, 0), raised)}


def _growing(
    loaded: LoadedIndex, index: faiss.Index, queries: np.ndarray, radius: float, most: int,
    params: dict[str, float], subset: Subset | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """k-NN of growing k until every query's k-th neighbour lies beyond the radius (or
    every one of the ``most`` rows came back); the hits within it, as range search gives."""
    similarity, k = loaded.metric == "cosine", min(START_K, most)
    selector, share = (None, 1.0) if subset is None else (subset.selector, subset.share)
    pending = np.arange(len(queries))
    none = (np.zeros(0, np.float32), np.zeros(0, np.int64))
    hits: list[tuple[np.ndarray, np.ndarray]] = [none] * len(queries)
    while len(pending):
        wider = _deeper(loaded, params, share * loaded.info.k / k)
        wider["efSearch"] = max(wider.get("efSearch", 0), k)  # HNSW: ef >= k
        sp = search_parameters(index, wider, selector)
        dist, rows = index.search(queries[pending], k, params=sp)
        inside = (rows >= 0) & _within(dist, radius, similarity)
        for i, query in enumerate(pending):
            hits[query] = (dist[i][inside[i]], rows[i][inside[i]])
        if k >= most:
            break
        pending, k = pending[inside[:, -1]], min(k * GROWTH, most)
    lims = np.concatenate([[0], np.cumsum([len(h[1]) for h in hits])]).astype(np.int64)
    return lims, np.concatenate([h[0] for h in hits]), np.concatenate([h[1] for h in hits])


def radius_search(
    loaded: LoadedIndex,
    queries: np.ndarray,
    radius: float,
    self_rows: np.ndarray | None = None,
    params: dict[str, float] | None = None,
    subset: Subset | None = None,
) -> RangeHits:
    """Every row of ``loaded`` (of ``subset`` if given) within ``radius`` of each query,
    closest first, each query's own row (``self_rows``) left out."""
    similarity = loaded.metric == "cosine"
    params = {**loaded.info.params, **(params or {})}
    index = loaded.on_cpu("faiss has no range search on a GPU")
    selector, share = (None, 1.0) if subset is None else (subset.selector, subset.share)
    most = max(subset.count if subset is not None else loaded.ntotal, 1)
    ranged = supports_range(index)

    def run(params: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if ranged:
            sp = search_parameters(index, params, selector)
            return _range(index, queries, radius, similarity, sp)
        return _growing(loaded, index, queries, radius, most, params, subset)

    found = run(params)
    steps = ladders(loaded.index, loaded.info.k)
    while steps:  # approximate: search deeper until the hits settle
        name, cap = steps[0][0], param_cap(index, steps[0][0])
        depth = int(np.diff(found[0]).max(initial=0))
        wider = _deeper(loaded, params, share * loaded.info.k / max(depth, 1))
        wider[name] = min(max(wider[name], 2 * params.get(name, 1)), cap)
        if wider[name] <= params.get(name, 0):
            break
        more = run(wider)
        settled = len(more[2]) - len(found[2]) <= max(1, SETTLED * len(found[2]))
        found, params = more, wider
        if settled:
            break
    method = "range search" if ranged else "k-NN of growing k"
    return _ordered(*found, self_rows, similarity, method)


def _ordered(
    lims: np.ndarray, dist: np.ndarray, rows: np.ndarray, self_rows: np.ndarray | None,
    similarity: bool, method: str,
) -> RangeHits:  # fmt: skip
    """Hits sorted closest first within each query, the query's own row dropped."""
    query = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
    keep = np.ones(len(rows), dtype=bool)
    if self_rows is not None:
        keep = rows != self_rows[query]
    query, dist, rows = query[keep], dist[keep], rows[keep]
    order = np.lexsort((-dist if similarity else dist, query))
    counts = np.bincount(query, minlength=len(lims) - 1)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return RangeHits(lims, dist[order], rows[order].astype(np.int64), method)
