"""A filter's search parameter, measured: the index's recall queries are searched with the
filter's selector and compared with the exact filtered answer, and the parameter raised
from :func:`~embedkit.index.filtered.filtered_params`' estimate until the lower bound of
recall@k reaches the target — or, at its cap, the filter is scanned exactly instead.

The estimate assumes a filter independent of the vectors; one that follows them (whole
regions of the space) can need far more, which only a measurement shows. The exact
filtered answer comes from the index's own full vectors — a flat storage (``Flat``, HNSW,
a refine stage) or the lists of an ``IVF…,Flat`` index — gathered for the kept rows in
chunks and searched by brute force (BLAS). An index of codes alone has no exact answer
to compare with: its filters keep the estimate, and the reason says so. The outcome is
kept with the index, per filter.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

from embedkit.index.filtered import (
    Subset,
    SubsetPlan,
    checked_plan,
    param_cap,
    plan_subset,
    search_parameters,
)
from embedkit.index.loaded import LoadedIndex, flat_storage
from embedkit.index.recall import Truth, recall_lower_bound, recall_per_query
from embedkit.index.recall_set import RecallSet
from embedkit.index.tune import exact_distances, ladders

__all__ = ["FILTER_QUERIES", "measured_plan"]

#: recall queries a filter is measured on (the first ones of the kept set)
FILTER_QUERIES = 200
#: the parameter grows by this factor between measurements
STEP = 2**0.5
#: rows gathered per brute-force step of the exact answer
CHUNK = 65_536


def _without_self(dist: np.ndarray, found: np.ndarray, labels: np.ndarray, k: int):
    """Each query's own row dropped from results searched one deeper (else the last)."""
    drop = found == labels[:, None]
    drop[:, -1] |= ~drop.any(axis=1)
    keep = ~drop
    return dist[keep].reshape(len(found), k), found[keep].reshape(len(found), k)


def _kept_vectors(index: faiss.Index, subset: Subset) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(faiss rows, vectors)`` of the subset's rows, in chunks, read from the index's
    flat storage or from the lists of an IVF-Flat index."""
    flat = flat_storage(index)
    if flat is not None:
        every = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(-1, flat.d)
        for start in range(0, subset.count, CHUNK):
            rows = subset.rows[start : start + CHUNK]
            yield rows, every[rows]
        return
    ivf, kept = faiss.downcast_index(index), np.zeros(subset.ntotal, dtype=bool)
    kept[subset.rows] = True
    rows, vectors, held = [], [], 0
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(number), size * ivf.code_size)
        mine = kept[ids]
        rows.append(ids[mine].copy())
        vectors.append(codes.view(np.float32).reshape(size, ivf.d)[mine])
        held += int(mine.sum())
        if held >= CHUNK or number == ivf.nlist - 1:
            yield np.concatenate(rows), np.concatenate(vectors)
            rows, vectors, held = [], [], 0
    if rows:
        yield np.concatenate(rows), np.concatenate(vectors)


def _exact_answer(
    loaded: LoadedIndex, queries: np.ndarray, labels: np.ndarray, subset: Subset, kk: int
) -> Truth | None:
    """The exact ``kk`` nearest rows of the subset (own rows left out), or None when the
    index keeps codes only."""
    index = loaded.on_cpu("faiss' GPU indexes take no IDSelector")
    ivf_flat = type(faiss.downcast_index(index)) is faiss.IndexIVFFlat
    if flat_storage(index) is None and not ivf_flat:
        return None
    similarity = loaded.metric == "cosine"
    metric = faiss.METRIC_INNER_PRODUCT if similarity else faiss.METRIC_L2
    heap = faiss.ResultHeap(len(queries), kk + 1, keep_max=similarity)
    for rows, vectors in _kept_vectors(index, subset):
        dist, pos = faiss.knn(queries, vectors, min(kk + 1, len(vectors)), metric=metric)
        heap.add_result(dist, np.where(pos < 0, -1, rows[np.maximum(pos, 0)]))
    heap.finalize()
    dist, found = _without_self(heap.D, heap.I, labels, kk)
    return Truth.from_knn(queries, dist, found, loaded.info.k, similarity)


def _reaching(
    loaded: LoadedIndex, queries: np.ndarray, labels: np.ndarray, subset: Subset,
    truth: Truth, start: dict[str, float],
) -> tuple[dict[str, float], float] | None:  # fmt: skip
    """The smallest ladder value from ``start`` whose recall bound reaches the target, and
    that bound (None: not even at the cap)."""
    index = loaded.on_cpu("faiss' GPU indexes take no IDSelector")
    name, k = ladders(index, loaded.info.k)[0][0], loaded.info.k
    cap = param_cap(index, name)
    values = [min(round(start[name] * STEP**i), cap) for i in range(64)]
    for value in sorted(set(values)):
        params = {**start, name: float(value)}
        sp = search_parameters(index, params, subset.selector)
        dist, found = _without_self(*index.search(queries, k + 1, params=sp), labels, k)
        per_query = recall_per_query(found, truth, dist if exact_distances(index) else None)
        lower = recall_lower_bound(per_query)
        if lower >= loaded.info.target_recall:
            return params, lower
    return None


def measured_plan(loaded: LoadedIndex, subset: Subset, recall: RecallSet | None) -> SubsetPlan:
    """How to search ``subset``: :func:`plan_subset`'s choice, with a selector search's
    parameter measured on the recall queries (kept with the subset, so once per filter)."""
    if subset.plan is None:
        plan = plan_subset(loaded, subset)
        if plan.method == "index+selector" and plan.params:
            plan = _measured(loaded, subset, recall, plan)
        subset.plan = plan
    return subset.plan


def _measured(
    loaded: LoadedIndex, subset: Subset, recall: RecallSet | None, plan: SubsetPlan
) -> SubsetPlan:
    if recall is None or len(recall) == 0:
        why = plan.reason + " (estimated: no recall queries)"
        return SubsetPlan(plan.method, plan.params, why)
    queries = np.ascontiguousarray(recall.queries[:FILTER_QUERIES])
    labels = recall.labels[:FILTER_QUERIES]
    truth = _exact_answer(loaded, queries, labels, subset, 2 * loaded.info.k)
    if truth is None:
        return SubsetPlan(plan.method, plan.params, plan.reason + " (estimated: codes only)")
    reached = _reaching(loaded, queries, labels, subset, truth, plan.params or {})
    name = ladders(loaded.index, loaded.info.k)[0][0]
    share = f"{subset.count:,} rows ({subset.share:.1%})"
    if reached is None or reached[0][name] >= param_cap(loaded.index, name):
        why = f"the filter keeps {share} and needs all of the index: brute force is faster"
        return SubsetPlan("exact subset scan", None, why)
    params, lower = reached
    why = (
        f"{name}={params[name]:g} reaches recall@{loaded.info.k} >= {lower:.3f} on "
        f"{len(queries)} recall queries"
    )
    return checked_plan(loaded, subset, params, why)
