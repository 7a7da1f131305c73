"""Tuning a built index: raise ``nprobe`` / ``efSearch`` / ``k_factor_rf`` until recall@k
on held-out queries reaches the target (faiss' ``ParameterSpace`` sets them).

Recall is measured against exact distances (:class:`Truth`): a found neighbour counts as
a hit when its exact distance is as good as the k-th true distance (to float precision),
so duplicates and ties are never misses. The target must hold for the *lower confidence
bound* of recall@k (mean per-query recall minus ``RECALL_Z`` standard errors), not only
for the sample mean, so the promise survives the sampling error of the tuning queries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

__all__ = [
    "K_FACTORS",
    "RECALL_Z",
    "UNTUNED",
    "AfterAdd",
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
#: standard errors between the mean recall and the bound that must reach the target
#: (2.0: ~97.7 % one-sided confidence under the normal approximation)
RECALL_Z = 2.0
#: relative tolerance under which a distance equals the k-th true distance (a tie)
TIE_RTOL = 1e-5


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


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k neighbours found, matched by id (``found`` may hold -1
    padding). Ties and duplicates count as misses here; :func:`recall_per_query` does not."""
    if truth.size == 0:
        return 1.0
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum() / truth.size)


@dataclass
class Truth:
    """The exact nearest neighbours of recall queries, best first.

    ``ids`` [nq, kk] (-1 padding) and ``dist`` [nq, kk] hold kk >= k columns so that ties
    just past the k-th are known; ``scale`` [nq] (|k-th distance| + |query|^2) sets the
    tolerance of a tie; ``similarity``: larger distances are closer (inner product).
    """

    ids: np.ndarray
    dist: np.ndarray
    k: int
    similarity: bool
    scale: np.ndarray

    @classmethod
    def from_knn(
        cls, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int, similarity: bool
    ) -> Truth:
        k = max(1, min(k, dist.shape[1]))
        norms = np.einsum("ij,ij->i", queries, queries) if len(queries) else np.zeros(0)
        scale = np.abs(dist[:, k - 1]) + norms if len(dist) else np.zeros(0)
        return cls(np.asarray(ids, np.int64), np.asarray(dist, np.float32), k, similarity, scale)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kth(self) -> np.ndarray:
        """The k-th true distance of each query."""
        return self.dist[:, self.k - 1]

    def subset(self, rows: np.ndarray) -> Truth:
        return Truth(self.ids[rows], self.dist[rows], self.k, self.similarity, self.scale[rows])

    def merged(self, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray) -> Truth:
        """The truth once more candidates (``dist``/``ids`` [nq, m]) joined the base."""
        all_d = np.concatenate([self.dist, dist], axis=1)
        all_i = np.concatenate([self.ids, ids], axis=1)
        key = np.where(all_i < 0, np.inf, -all_d if self.similarity else all_d)
        order = np.argsort(key, axis=1, kind="stable")[:, : self.ids.shape[1]]
        take = np.take_along_axis
        return Truth.from_knn(
            queries, take(all_d, order, 1), take(all_i, order, 1), self.k, self.similarity
        )

    def is_hit(self, dist: np.ndarray) -> np.ndarray:
        """Whether exact distances [nq, m] are as close as the k-th true one (ties count)."""
        tol = (TIE_RTOL * self.scale + 1e-30)[:, None]
        kth = self.kth[:, None]
        return dist >= kth - tol if self.similarity else dist <= kth + tol


def recall_per_query(
    found: np.ndarray, truth: Truth, found_dist: np.ndarray | None = None
) -> np.ndarray:
    """Recall@k of each query: the share of its k slots filled by a true neighbour.

    A found row is a hit when its exact distance is within a tie of the k-th true
    distance: from ``found_dist`` when the index returns exact distances, else from the
    truth's own kk columns (an id it does not hold is a miss)."""
    if len(truth) == 0:
        return np.ones(0)
    k = truth.k
    found = found[:, :k]
    valid = found >= 0
    match = (found[:, :, None] == truth.ids[:, None, :]) & valid[:, :, None]
    fill = -np.inf if truth.similarity else np.inf
    if found_dist is not None:
        dist = np.where(valid, found_dist[:, :k], fill)
    else:
        known = np.where(match, truth.dist[:, None, :], fill)
        dist = known.max(axis=2) if truth.similarity else known.min(axis=2)
    hits = (match[:, :, :k].any(axis=2) | truth.is_hit(dist)) & valid
    return np.minimum(hits.sum(axis=1), k) / k


def recall_lower_bound(per_query: np.ndarray, z: float = RECALL_Z) -> float:
    """Mean recall minus ``z`` standard errors of the mean (per-query recalls are the
    independent samples; the k slots of one query are not)."""
    n = len(per_query)
    if n == 0:
        return 1.0
    spread = float(per_query.std(ddof=1)) if n > 1 else 1.0
    return float(per_query.mean() - z * spread / math.sqrt(n))


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


def measure_recall(
    index: faiss.Index, queries: np.ndarray, truth: Truth, params: dict[str, float]
) -> Tuned:
    """Set ``params`` on ``index`` and measure recall@k of ``queries`` against ``truth``."""
    set_params(index, params)
    dist, found = index.search(queries, truth.k)
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
) -> Tuned:
    """Raise the search parameters until the lower confidence bound of recall@k reaches
    ``target`` (see :func:`recall_lower_bound`); ``start``: values not to go below;
    ``warn``: the index's name in a warning when no parameter reaches the target.

    ``queries`` are held out of the index while tuning (a query already in an HNSW graph
    finds its neighbours through its own links, which would overstate recall).
    """
    steps = ladders(index, truth.k, on_gpu)
    if not steps:
        return measure_recall(index, queries, truth, {})
    start = start or {}
    (primary, values), secondary = steps[0], steps[1:]
    values = [v for v in values if v >= start.get(primary, 0)] or values[-1:]
    fixed = {name: vals[-1] for name, vals in secondary}  # most generous first
    best: Tuned | None = None
    tried: list[tuple[float, float]] = []
    for value in values:
        got = measure_recall(index, queries, truth, {primary: value, **fixed})
        if best is None or got.lower > best.lower + 1e-9:
            best = got
        if got.reaches(target):
            if tried:
                best = _bisect(index, queries, truth, target, primary, (tried[-1][0], got))
            break
        tried.append((value, got.recall))
        earlier = [recall for v, recall in tried if v <= value / 3]
        if earlier and got.recall - earlier[-1] < 0.002:
            break  # plateau: tripling the parameter gained nothing, more will not get there
    assert best is not None
    for name, vals in secondary:  # then the cheapest secondary value that still reaches it
        for value in [v for v in vals[:-1] if v >= start.get(name, 0)]:
            got = measure_recall(index, queries, truth, {**best.params, name: value})
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
) -> Tuned:
    """The smallest ``primary`` value between a failing one and a passing one (``Tuned``)
    that still reaches ``target``, to within 5 %: the ladder's steps (19-41 %) would
    otherwise overshoot by half a step on average, and q/s falls in proportion."""
    below, passing = between
    while passing.params[primary] - below > max(1.0, 0.05 * passing.params[primary]):
        middle = int((below + passing.params[primary]) // 2)
        got = measure_recall(index, queries, truth, {**passing.params, primary: middle})
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
