"""Recall after an incremental update: measured again, the search parameters raised when
it fell below the target, and the filtered-search parameters checked the same way.

* Inverted-list indexes (IVF, with or without codes or a refine stage) are measured on
  the recall queries kept with the index (:mod:`embedkit.index.recall_set`), each with
  its own row left out: which lists a query probes does not depend on its row being in
  one of them.
* Other approximate kinds (HNSW) are measured on fresh queries: rows of the new parts
  held out of the add, their exact neighbours read from the index's own flat storage
  (a query in an HNSW graph would find its neighbours through its own links), then added
  in two checked halves as a build adds its recall queries.
* ``Flat`` is exact: nothing to measure.

A fall that raising the parameters cannot mend (below the target, or below what the
index reached when it was built if that was less) makes the update rebuild instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from embedkit.index.filtered import calibrate_filtered
from embedkit.index.info import IndexInfo
from embedkit.index.loaded import flat_storage
from embedkit.index.recall import Truth
from embedkit.index.recall_set import TRUTH_DEPTH, RecallSet, without_self
from embedkit.index.tune import (
    Search,
    Tuned,
    add_held_out,
    ivf_of,
    ladders,
    measure_recall,
    plain_search,
    set_params,
    tune,
)

__all__ = ["MIN_QUERIES", "Recheck", "recheck_fresh", "recheck_kept"]

#: fewer recall queries than this cannot measure recall: it is not re-measured
MIN_QUERIES = 50
Knn = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Recheck:
    """Recall after the update: the parameters kept or raised, what they reach, on how
    many queries and how, and whether the index still keeps its promise."""

    params: dict[str, float]
    how: str
    recall: float | None = None
    lower: float | None = None
    queries: int = 0
    retuned: bool = False
    holds: bool = True
    filter_params: dict[str, float] = field(default_factory=dict)


def _goal(info: IndexInfo) -> float:
    """What recall must stay at: the target, or what the build reached if that was less."""
    built = info.recall_lower if info.recall_lower is not None else info.target_recall
    return min(info.target_recall, built)


def _measured(
    index: faiss.Index, queries: np.ndarray, truth: Truth, info: IndexInfo, search: Search
) -> tuple[Tuned, bool]:
    """Recall at the index's parameters, raised (from there) when it fell short."""
    got = measure_recall(index, queries, truth, info.params, search)
    if got.lower >= _goal(info):
        return got, False
    return tune(index, queries, truth, info.target_recall, start=info.params, search=search), True


def _filter_checked(
    index: faiss.Index, queries: np.ndarray, truth: Truth, info: IndexInfo, params: dict,
    search: Search,
) -> dict[str, float]:  # fmt: skip
    """The filtered-search parameters, kept when they still reach the target at depth."""
    if not info.filter_params or truth.ids.shape[1] < TRUTH_DEPTH * truth.k:
        return dict(info.filter_params)
    deep = Truth.from_knn(queries, truth.dist, truth.ids, TRUTH_DEPTH * truth.k, truth.similarity)
    got = measure_recall(index, queries, deep, {**params, **info.filter_params}, search)
    set_params(index, params)  # the index goes on with its own search parameters
    if got.lower >= info.target_recall:
        return dict(info.filter_params)
    return calibrate_filtered(index, queries, truth, params, info.target_recall, search=search)


def recheck_kept(index: faiss.Index, recall: RecallSet | None, info: IndexInfo) -> Recheck:
    """Measure an inverted-list index on its kept recall queries (own row left out)."""
    if recall is None or not ladders(index, info.k):
        return Recheck(dict(info.params), "not re-measured: no recall queries were kept")
    usable, truth = recall.truth(info.k)
    if len(usable) < MIN_QUERIES:
        return Recheck(dict(info.params), f"not re-measured: {len(usable)} recall queries left")
    queries, search = recall.queries[usable], without_self(recall.labels[usable])
    got, retuned = _measured(index, queries, truth, info, search)
    deep_usable, deep_truth = recall.truth(info.k, depth=TRUTH_DEPTH * info.k)
    filters = dict(info.filter_params)
    if len(deep_usable) >= MIN_QUERIES:
        deep_search = without_self(recall.labels[deep_usable])
        filters = _filter_checked(
            index, recall.queries[deep_usable], deep_truth, info, got.params, deep_search
        )
    how = f"{len(usable):,} kept recall queries, own row left out"
    return Recheck(
        got.params, how, got.recall, got.lower, len(usable), retuned,
        got.lower >= _goal(info), filters,
    )  # fmt: skip


def recheck_fresh(
    index: faiss.Index, fresh: np.ndarray, info: IndexInfo, knn: Knn
) -> tuple[Recheck, list[np.ndarray]]:
    """Measure ``index`` on ``fresh`` rows held out of the add (exact neighbours from its
    flat storage), then add them in two checked halves; returns the check and the order
    the fresh rows went in."""
    storage = flat_storage(index)
    kk = min(TRUTH_DEPTH * info.k, int(index.ntotal))
    if storage is None or len(fresh) < MIN_QUERIES or kk < info.k or ivf_of(index) is not None:
        index.add(fresh)
        why = "no flat storage to measure on" if storage is None else f"{len(fresh)} new rows"
        return Recheck(dict(info.params), f"not re-measured: {why}"), [np.arange(len(fresh))]
    dist, rows = storage.search(fresh, kk)
    truth = Truth.from_knn(fresh, dist, rows, info.k, info.metric == "cosine")
    got, retuned = _measured(index, fresh, truth, info, plain_search)
    filters = _filter_checked(index, fresh, truth, info, got.params, plain_search)
    tuned, check, order = add_held_out(index, fresh, truth, got, knn, info.target_recall)
    retuned = retuned or check.retuned
    how = f"{len(fresh):,} fresh queries from the new rows"
    return Recheck(
        tuned.params, how, tuned.recall, tuned.lower, len(fresh), retuned,
        tuned.lower >= _goal(info), filters,
    ), order  # fmt: skip
