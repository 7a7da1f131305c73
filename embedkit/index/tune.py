"""Tuning a built index: raise ``nprobe`` / ``efSearch`` / ``k_factor_rf`` until recall@k
on held-out queries reaches the target (faiss' ``ParameterSpace`` sets them).

Recall is measured against exact distances (:class:`~embedkit.index.recall.Truth`, ties
and duplicates are hits), and the target must hold for its lower confidence bound (see
:mod:`embedkit.index.recall`). A search other than ``index.search`` (a selector, the
query's own row left out) is passed as ``search``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from embedkit.index.recall import (
    RECALL_Z,
    Truth,
    recall_at_k,
    recall_lower_bound,
    recall_per_query,
)

__all__ = [
    "K_FACTORS",
    "RECALL_Z",
    "UNTUNED",
    "AfterAdd",
    "Search",
    "Truth",
    "Tuned",
    "add_held_out",
    "ef_ladder",
    "exact_distances",
    "is_gpu_index",
    "ivf_of",
    "ladders",
    "measure_recall",
    "nprobe_ladder",
    "plain_search",
    "recall_at_k",
    "recall_lower_bound",
    "recall_per_query",
    "set_params",
    "tune",
    "untuned_params",
]

GPU_MAX_NPROBE = 2048  # faiss GPU IVF limit
#: nprobe 1 .. 8192 in steps of 2^(1/4) (~19 %): fine enough that the tuned value does not
#: overshoot the target by a whole 1.5x step
NPROBES = sorted({round(2 ** (i / 4)) for i in range(53)})
#: efSearch 8 .. 2048 in steps of 2^(1/2) (never below k)
EF_SEARCHES = sorted({round(8 * 2 ** (i / 2)) for i in range(17)})
K_FACTORS = [1, 2, 4, 8, 16, 32, 64, 128]


def nprobe_ladder(nlist: int) -> list[int]:
    """nprobe values to try for ``nlist`` lists (always ends with ``nlist``: exhaustive)."""
    return [p for p in NPROBES if p < nlist] + [nlist]


def ef_ladder(k: int) -> list[int]:
    """efSearch values to try; efSearch below k makes no sense."""
    return sorted({max(ef, k) for ef in EF_SEARCHES})


def is_gpu_index(index: faiss.Index) -> bool:
    """Whether ``index`` lives on GPUs: a faiss ``GpuIndex``, or shards or replicas of them
    (whose parameters only ``GpuParameterSpace`` can reach)."""
    if not hasattr(faiss, "GpuIndex"):
        return False
    if isinstance(index, faiss.GpuIndex):
        return True
    parts = faiss.downcast_index(index)
    if isinstance(parts, (faiss.IndexShards, faiss.IndexReplicas)) and parts.count():
        return all(is_gpu_index(faiss.downcast_index(parts.at(i))) for i in range(parts.count()))
    return False


def ivf_of(index: faiss.Index) -> Any:
    """The IVF part of ``index`` (for ``nlist``): a CPU ``IndexIVF`` inside any wrapper, a
    ``GpuIndexIVF`` (which ``try_extract_index_ivf`` does not see), or the first shard's
    or replica's; None for other kinds."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return ivf
    inner = faiss.downcast_index(index)
    if hasattr(faiss, "GpuIndexIVF") and isinstance(inner, faiss.GpuIndexIVF):
        return inner
    if isinstance(inner, (faiss.IndexShards, faiss.IndexReplicas)) and inner.count():
        return ivf_of(inner.at(0))
    return None


def exact_distances(index: faiss.Index) -> bool:
    """Whether ``index.search`` returns exact distances (it stores full vectors)."""
    if is_gpu_index(index):
        return any(
            isinstance(index, getattr(faiss, name, ()))
            for name in ("GpuIndexFlat", "GpuIndexIVFFlat")
        )
    cpu = faiss.downcast_index(index)
    if isinstance(cpu, faiss.IndexRefine):
        return isinstance(faiss.downcast_index(cpu.refine_index), faiss.IndexFlat)
    if isinstance(cpu, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(cpu.storage), faiss.IndexFlat)
    return isinstance(cpu, (faiss.IndexFlat, faiss.IndexIVFFlat))


def set_params(index: faiss.Index, params: dict[str, float]) -> None:
    """Apply faiss search parameters (``nprobe``, ``efSearch``, ``k_factor_rf``)."""
    if not params:
        return
    space = faiss.GpuParameterSpace() if is_gpu_index(index) else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def ladders(index: faiss.Index, k: int, on_gpu: bool = False) -> list[tuple[str, list[int]]]:
    """Tunable parameters, the primary one (recall grows with it) first."""
    steps: list[tuple[str, list[int]]] = []
    ivf = ivf_of(index)
    cpu = faiss.downcast_index(index)
    if ivf is not None:
        probes = nprobe_ladder(ivf.nlist)
        steps.append(("nprobe", [p for p in probes if p <= GPU_MAX_NPROBE] if on_gpu else probes))
    elif isinstance(cpu, faiss.IndexHNSW):
        steps.append(("efSearch", ef_ladder(k)))
    if isinstance(cpu, faiss.IndexRefine):
        steps.append(("k_factor_rf", K_FACTORS))
    return steps


#: parameters used when recall is not measured (recall_sample=0)
UNTUNED = {"nprobe": 16, "efSearch": 64, "k_factor_rf": 16}


@dataclass
class Tuned:
    """Search parameters and what they reach on the tuning queries: the mean recall@k,
    its lower confidence bound and the per-query recalls."""

    params: dict[str, float]
    recall: float
    lower: float
    per_query: np.ndarray

    def reaches(self, target: float) -> bool:
        return self.lower >= target


#: ``search(index, queries, k) -> (distances, rows)``: how recall queries are searched
Search = Callable[[faiss.Index, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def plain_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(queries, k)


def measure_recall(
    index: faiss.Index,
    queries: np.ndarray,
    truth: Truth,
    params: dict[str, float],
    search: Search = plain_search,
) -> Tuned:
    """Set ``params`` on ``index`` and measure recall@k of ``queries`` against ``truth``."""
    set_params(index, params)
    dist, found = search(index, queries, truth.k)
    per_query = recall_per_query(found, truth, dist if exact_distances(index) else None)
    recall = float(per_query.mean()) if len(per_query) else 1.0
    return Tuned(dict(params), recall, recall_lower_bound(per_query), per_query)


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    truth: Truth,
    target: float,
    on_gpu: bool = False,
    start: dict[str, float] | None = None,
    warn: str | None = None,
    search: Search = plain_search,
) -> Tuned:
    """Raise the search parameters until the lower confidence bound of recall@k reaches
    ``target`` (see :func:`recall_lower_bound`); ``start``: values not to go below;
    ``warn``: the index's name in a warning when no parameter reaches the target;
    ``search``: how the queries are searched (default ``index.search``).

    ``queries`` are held out of the index while tuning (a query already in an HNSW graph
    finds its neighbours through its own links, which would overstate recall).
    """
    steps = ladders(index, truth.k, on_gpu)
    if not steps:
        return measure_recall(index, queries, truth, {}, search)
    start = start or {}
    (primary, values), secondary = steps[0], steps[1:]
    values = [v for v in values if v >= start.get(primary, 0)] or values[-1:]
    fixed = {name: vals[-1] for name, vals in secondary}  # most generous first
    best: Tuned | None = None
    tried: list[tuple[float, float]] = []
    for value in values:
        got = measure_recall(index, queries, truth, {primary: value, **fixed}, search)
        if best is None or got.lower > best.lower + 1e-9:
            best = got
        if got.reaches(target):
            if tried:
                between = (tried[-1][0], got)
                best = _bisect(index, queries, truth, target, primary, between, search)
            break
        tried.append((value, got.recall))
        earlier = [recall for v, recall in tried if v <= value / 3]
        if earlier and got.recall - earlier[-1] < 0.002:
            break  # plateau: tripling the parameter gained nothing, more will not get there
    assert best is not None
    for name, vals in secondary:  # then the cheapest secondary value that still reaches it
        for value in [v for v in vals[:-1] if v >= start.get(name, 0)]:
            got = measure_recall(index, queries, truth, {**best.params, name: value}, search)
            if got.lower >= min(target, best.lower):
                best = got
                break
    set_params(index, best.params)
    if warn and not best.reaches(target):
        warnings.warn(
            f"{warn} reaches recall@{truth.k}={best.recall:.3f} (lower bound {best.lower:.3f}) "
            f"< {target}; try another kind (kind='auto' measures them) or a larger memory budget",
            stacklevel=5,  # tune <- tune_pass <- _build <- build_index <- its caller
        )
    return best


def _bisect(
    index: faiss.Index,
    queries: np.ndarray,
    truth: Truth,
    target: float,
    primary: str,
    between: tuple[float, Tuned],
    search: Search = plain_search,
) -> Tuned:
    """The smallest ``primary`` value between a failing one and a passing one (``Tuned``)
    that still reaches ``target``, to within 5 %: the ladder's steps (19-41 %) would
    otherwise overshoot by half a step on average, and q/s falls in proportion."""
    below, passing = between
    while passing.params[primary] - below > max(1.0, 0.05 * passing.params[primary]):
        middle = int((below + passing.params[primary]) // 2)
        got = measure_recall(index, queries, truth, {**passing.params, primary: middle}, search)
        if got.reaches(target):
            passing = got
        else:
            below = middle
    return passing


def untuned_params(index: faiss.Index, k: int) -> dict[str, float]:
    """Generous search parameters for an index whose recall is not measured."""
    return {
        name: min(UNTUNED.get(name, values[-1]), values[-1]) for name, values in ladders(index, k)
    }


@dataclass
class AfterAdd:
    """The recall check after the held-out rows went in (see :func:`add_held_out`):
    recall@k of the last half before it was added, how far it dropped, whether the
    parameters were raised again."""

    recall: float | None = None
    dropped: float = 0.0
    retuned: bool = False


def add_held_out(
    index: faiss.Index,
    queries: np.ndarray,
    truth: Truth,
    tuned: Tuned,
    knn: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    target: float,
    on_gpu: bool = False,
) -> tuple[Tuned, AfterAdd, list[np.ndarray]]:
    """Add the held-out ``queries`` (tuned on) to ``index`` in two halves, checking recall
    between them.

    The second half, not yet in the index, is searched again against a truth that now
    includes the first half (``knn(xq, xb, k)`` gives exact neighbours). When recall
    dropped (adding rows changes an HNSW graph) so far that the bound misses ``target``,
    the parameters are raised again on that half. Returns the final tuning, the check,
    and the positions in ``queries`` of the two halves in the order they were added.
    """
    first, second = np.arange(0, len(queries), 2), np.arange(1, len(queries), 2)
    if len(first) == 0 or len(second) == 0:
        index.add(queries)
        return tuned, AfterAdd(), [np.arange(len(queries))]
    later = truth.subset(second)
    before = measure_recall(index, queries[second], later, tuned.params)
    rows = int(index.ntotal)
    index.add(queries[first])
    dist, found = knn(queries[second], queries[first], min(truth.ids.shape[1], len(first)))
    later = later.merged(queries[second], dist, found + rows)
    after = measure_recall(index, queries[second], later, tuned.params)
    check = AfterAdd(after.recall, before.recall - after.recall)
    if (
        tuned.reaches(target)
        and tuned.lower - max(check.dropped, 0.0) < target
        and not after.reaches(target)
    ):
        tuned = tune(index, queries[second], later, target, on_gpu, start=tuned.params)
        check.retuned = True
    else:
        set_params(index, tuned.params)
    index.add(queries[second])
    return tuned, check, [first, second]
