"""Searching a filtered view with the whole dataset's index: a faiss ``IDSelector`` over the
view's rows (``SearchParameters(sel=...)``), or an exact scan of the view when it is
small enough that brute force is faster.

A filter keeping a share ``s`` of the rows leaves an inverted-list search at its tuned
``nprobe`` with about ``s`` times the candidates it needs, so the search parameter is
raised: a build measures the value reaching the recall target for recall@(10·k) on its
recall queries (``IndexInfo.filter_params``: what a filter keeping a tenth of the rows,
independent of the vectors, needs), and a filter keeping ``s`` gets the tuned value times
``(filter_value / tuned) ** log10(1/s)``, never less than the tuned value, capped at
``nlist`` (``efSearch``: ``MAX_EF``). Without a measured value, the inverse of ``s`` is used.
A filter that keeps at most ``EXACT_SUBSET_ROWS`` rows is scanned exactly, and so is one
whose search would visit as many rows as the filter keeps (:func:`visited_rows`: the
lists probed plus the coarse quantizer's centroids; for HNSW, efSearch times the links
of a node): brute force over the kept rows is faster then. Many queries at once
(``BLAS_QUERIES`` or more) make brute force ``BLAS_GAIN`` times cheaper per row (faiss
computes their distances as one matrix product), so such a call scans the kept rows
exactly unless they outnumber ``BLAS_GAIN`` times the rows the index visits (one query
at a time: ``SCAN_GAIN`` times; :func:`method_for`). A ``Flat`` index with a selector is
exact already. Queries that still get fewer than k hits are searched again with 4x the
parameter, up to the cap.
:mod:`embedkit.index.filter_tune` measures the parameter on the recall queries (filters
that follow the vectors need more).

faiss' GPU indexes take no selector: a filtered search runs on the CPU index (see
:meth:`LoadedIndex.on_cpu`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedkit.errors import InputError, first_line
from embedkit.index.choose import HNSW_M
from embedkit.index.loaded import LoadedIndex
from embedkit.index.recall import Truth
from embedkit.index.recall_set import TRUTH_DEPTH
from embedkit.index.tune import Search, ivf_of, ladders, plain_search, set_params, tune
from embedkit.store.dataset import LatentDataset

__all__ = [
    "BLAS_GAIN",
    "BLAS_QUERIES",
    "EXACT_SUBSET_ROWS",
    "MAX_EF",
    "SCAN_GAIN",
    "Subset",
    "SubsetPlan",
    "calibrate_filtered",
    "checked_plan",
    "filtered_params",
    "method_for",
    "param_cap",
    "plan_subset",
    "search_parameters",
    "selector_search",
    "subset_of",
    "visited_rows",
]

#: a filter keeping at most this many rows is scanned exactly: below it brute force over
#: the rows is faster than the index with a selector (benchmarks/filtered_search.py)
EXACT_SUBSET_ROWS = 10_000
#: from this many queries in one call faiss' brute force is one matrix product (BLAS) ...
BLAS_QUERIES = 20
#: ... and costs this many times less per row than the index's scan of its lists (1M x 128:
#: 2.4 ns against 23 ns a row on one core, benchmarks/filtered_search.py)
BLAS_GAIN = 10
#: one query at a time, the exact scan wins until the kept rows outnumber the rows the
#: index visits by this factor (the crossover measured at 1M rows: 20k kept, 14k visited)
SCAN_GAIN = 1.5
#: the largest efSearch a filtered HNSW search is given
MAX_EF = 4096
#: a query with fewer than k hits is searched again with this many times the parameter
RETRY_GROWTH = 4
_SUBSETS = 8  # filters remembered per index


def calibrate_filtered(
    index: faiss.Index,
    queries: np.ndarray,
    truth: Truth,
    params: dict[str, float],
    target: float,
    on_gpu: bool = False,
    search: Search = plain_search,
) -> dict[str, float]:
    """The primary search parameter (``nprobe``, ``efSearch``) reaching ``target`` for
    recall@(``TRUTH_DEPTH``·k) of ``queries`` (``truth`` must hold that many exact
    neighbours); ``{}`` when there is nothing to tune or too few neighbours are known."""
    deep_k = TRUTH_DEPTH * truth.k
    steps = ladders(index, deep_k, on_gpu)
    if not steps or truth.ids.shape[1] < deep_k or len(queries) == 0:
        return {}
    deep = Truth.from_knn(queries, truth.dist, truth.ids, deep_k, truth.similarity)
    primary = steps[0][0]
    got = tune(index, queries, deep, target, on_gpu, start=params, search=search)
    set_params(index, params)  # the index goes on with its own tuning
    return {primary: float(max(got.params[primary], params.get(primary, 0)))}


@dataclass(frozen=True)
class SubsetPlan:
    """How a filtered view is searched: ``method`` (``"index+selector"`` or ``"exact
    subset scan"``), the search parameters (selector only), why, and about how many rows
    a selector search visits (see :func:`method_for`)."""

    method: str
    params: dict[str, float] | None
    reason: str
    visited: float = 0.0


@dataclass
class Subset:
    """The faiss rows a filter keeps, as a sorted array and a faiss selector over them,
    and how it is searched once that is decided."""

    rows: np.ndarray
    ntotal: int
    bitmap: np.ndarray  # kept alive: the selector points into it
    selector: Any
    plan: SubsetPlan | None = None

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def share(self) -> float:
        return self.count / max(self.ntotal, 1)


def subset_of(loaded: LoadedIndex, view: LatentDataset) -> Subset:
    """The rows of ``loaded`` (an index of the whole dataset) that ``view``'s filter keeps;
    remembered with the index for the last few filters."""
    key = ("subset", str(view.expression))
    memo = loaded.memo
    if key in memo:
        return memo[key]
    try:  # the filter's own columns only, read in storage order
        keep = view.dataset.to_table(columns={"keep": view.expression}).column("keep")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InputError(
            f"cannot apply the filter {view.expression} to {view.path} ({first_line(exc)}); "
            "check the column names and value types"
        ) from None
    positions = np.flatnonzero(pc.fill_null(keep, False).to_numpy(zero_copy_only=False))
    rows = loaded.rows_in_storage_order()[positions]
    rows = np.unique(rows[rows >= 0])
    bits = np.zeros(loaded.ntotal, dtype=bool)
    bits[rows] = True
    bitmap = np.packbits(bits, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    subset = Subset(rows, loaded.ntotal, bitmap, selector)
    if len([k for k in memo if k[0] == "subset"]) >= _SUBSETS:
        memo.pop(next(k for k in memo if k[0] == "subset"))
    memo[key] = subset
    return subset


def param_cap(index: faiss.Index, name: str) -> int:
    if name == "nprobe":
        ivf = ivf_of(index)
        return int(ivf.nlist) if ivf is not None else 1
    return MAX_EF


def filtered_params(loaded: LoadedIndex, share: float) -> dict[str, float]:
    """The search parameters for a filter keeping ``share`` of the rows (module docstring)."""
    params = dict(loaded.info.params)
    steps = ladders(loaded.index, loaded.info.k)
    if not steps or share >= 1:
        return params
    name = steps[0][0]
    tuned = float(params.get(name, 1))
    measured = loaded.info.filter_params.get(name)
    if measured is None:  # not measured: keep as many kept rows in reach as without a filter
        value = tuned / max(share, 1e-9)
    else:
        value = tuned * (max(measured, tuned) / tuned) ** (math.log(1 / share) / math.log(10))
    params[name] = float(min(math.ceil(value), param_cap(loaded.index, name)))
    return params


def visited_rows(index: faiss.Index, params: dict[str, float]) -> float:
    """About how many rows a search with ``params`` looks at: an IVF index's probed lists
    and centroids, an HNSW graph's efSearch nodes times their links (``ntotal`` else)."""
    ivf = ivf_of(index)
    if ivf is not None:
        nprobe = params.get("nprobe", 1)
        return nprobe * index.ntotal / max(ivf.nlist, 1) + ivf.nlist
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return params.get("efSearch", inner.hnsw.efSearch) * 2 * HNSW_M
    return float(index.ntotal)


def plan_subset(loaded: LoadedIndex, subset: Subset) -> SubsetPlan:
    """Choose between the index with a selector and an exact scan by the subset's size."""
    share = f"{subset.count:,} rows ({subset.share:.1%})"
    if subset.count <= EXACT_SUBSET_ROWS:
        why = f"the filter keeps {share} <= {EXACT_SUBSET_ROWS:,}: brute force is faster"
        return SubsetPlan("exact subset scan", None, why)
    steps = ladders(loaded.index, loaded.info.k)
    if not steps:
        return SubsetPlan("index+selector", {}, f"the filter keeps {share}; the index is exact")
    params = filtered_params(loaded, subset.share)
    return checked_plan(loaded, subset, params, f"{steps[0][0]}={params[steps[0][0]]:g}")


def checked_plan(
    loaded: LoadedIndex, subset: Subset, params: dict[str, float], why: str
) -> SubsetPlan:
    """The selector with ``params``, or the exact scan when that visits no fewer rows."""
    share = f"{subset.count:,} rows ({subset.share:.1%})"
    visited = visited_rows(loaded.index, params)
    if visited >= subset.count:
        why = f"the filter keeps {share}; the index would visit ~{visited:,.0f} rows ({why})"
        return SubsetPlan("exact subset scan", None, why + ": brute force is faster")
    return SubsetPlan("index+selector", params, f"the filter keeps {share}; {why}", visited)


def method_for(plan: SubsetPlan, subset: Subset, queries: int) -> SubsetPlan:
    """``plan`` for a call of ``queries`` queries: the exact scan when the kept rows are
    few against the rows the index visits (``SCAN_GAIN`` times; ``BLAS_GAIN`` times when
    the queries are enough for brute force to run as a matrix product)."""
    batched = queries >= BLAS_QUERIES
    gain = BLAS_GAIN if batched else SCAN_GAIN
    if plan.method != "index+selector" or subset.count > gain * plan.visited:
        return plan
    calls = f"{queries:,} queries at once" if batched else "one query at a time"
    why = (
        f"{calls}: brute force over the filter's {subset.count:,} rows costs less than "
        f"the index visiting ~{plan.visited:,.0f} rows a query "
        f"({plan.reason.split('; ', 1)[-1]})"
    )
    return SubsetPlan("exact subset scan", None, why)


def search_parameters(index: faiss.Index, params: dict[str, float], selector: Any = None) -> Any:
    """faiss ``SearchParameters`` with ``selector`` (None: every row) and ``params`` for
    ``index`` (IVF, HNSW, a refine stage or a transform around them, or any other kind:
    the selector alone)."""
    inner = faiss.downcast_index(index)
    sel = {} if selector is None else {"sel": selector}
    if isinstance(inner, faiss.IndexRefine):
        base = search_parameters(inner.base_index, params, selector)
        k_factor = float(params.get("k_factor_rf", inner.k_factor))
        out = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
        out.kept = base  # the nested parameters must outlive the search
        return out
    if isinstance(inner, faiss.IndexPreTransform):
        nested = search_parameters(inner.index, params, selector)
        out = faiss.SearchParametersPreTransform(index_params=nested)
        out.kept = nested
        return out
    if isinstance(inner, faiss.IndexIVF):
        nprobe = int(params.get("nprobe", inner.nprobe))
        return faiss.SearchParametersIVF(**sel, nprobe=min(nprobe, inner.nlist))
    if isinstance(inner, faiss.IndexHNSW):
        ef = int(params.get("efSearch", inner.hnsw.efSearch))
        return faiss.SearchParametersHNSW(**sel, efSearch=ef)
    return faiss.SearchParameters(**sel)


def selector_search(
    loaded: LoadedIndex, queries: np.ndarray, k: int, subset: Subset, params: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of ``subset`` for each query, on the CPU index with a selector;
    queries left with fewer than k hits are searched again with 4x the parameter."""
    index = loaded.on_cpu("faiss' GPU indexes take no IDSelector")
    dist, found = index.search(queries, k, params=search_parameters(index, params, subset.selector))
    steps = ladders(index, loaded.info.k)
    wanted = min(k, subset.count)
    while steps:
        short = np.flatnonzero((found[:, :wanted] < 0).any(axis=1))
        name = steps[0][0]
        if len(short) == 0 or params.get(name, 0) >= param_cap(index, name):
            break
        grown = RETRY_GROWTH * params.get(name, 1)
        params = {**params, name: min(grown, param_cap(index, name))}
        again = search_parameters(index, params, subset.selector)
        dist[short], found[short] = index.search(queries[short], k, params=again)
    return dist, found
