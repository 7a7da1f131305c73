"""Filling a trained index with every row but the recall queries (pass 2 of a build):
streamed here, on a GPU copy when one fits, or in shards on Ray
(:mod:`~.sharded`); into inverted lists on disk (:mod:`~.ondisk`) when asked. The
queries' exact neighbours are found on the way."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from embedkit.index.gpu import GpuHelper, to_gpu
from embedkit.index.info import index_dir
from embedkit.index.metric import METRICS
from embedkit.index.ondisk import LISTS_SUFFIX, lists_to_disk
from embedkit.index.plan import BuildPlan
from embedkit.index.recall_set import TRUTH_DEPTH
from embedkit.index.select import progress_bar, stream_batches
from embedkit.index.sharded import sharded_add_pass
from embedkit.index.tune import Truth

__all__ = ["Filled", "add_pass", "exact_knn", "fill", "lists_path"]


def add_pass(
    plan: BuildPlan,
    work: faiss.Index,
    queries: np.ndarray,
    gpu: GpuHelper | None,
    progress: bool,
    batch_size: int,
) -> tuple[list[np.ndarray], Truth | None]:
    """Pass 2: add every row but the queries to ``work``, computing the queries' exact
    k nearest neighbours on the way. Returns the ids in faiss row order and the true
    neighbours with their distances (None without queries)."""
    k_eff = min(plan.k, plan.n - len(queries))
    # k and more: ties past the k-th, and the depth a filtered search is calibrated on
    kk = min(max(2, TRUTH_DEPTH) * plan.k, plan.n - len(queries))
    keep_max = plan.metric == "cosine"
    heap = faiss.ResultHeap(len(queries), kk, keep_max=keep_max) if len(queries) else None
    id_parts: list[np.ndarray] = []
    added = 0
    with progress_bar(progress, plan.n, "add") as bar:
        for offset, ids, vectors in stream_batches(plan.ds, plan.metric, batch_size):
            bar.update(len(vectors))
            if heap is not None:  # hold the query rows back
                lo, hi = np.searchsorted(plan.query_pos, [offset, offset + len(vectors)])
                keep = np.ones(len(vectors), dtype=bool)
                keep[plan.query_pos[lo:hi] - offset] = False
                vectors, ids = vectors[keep], ids[keep]
            if len(vectors) == 0:
                continue
            work.add(vectors)
            id_parts.append(ids)
            if heap is not None:
                dist, found = exact_knn(queries, vectors, min(kk, len(vectors)), plan.metric, gpu)
                heap.add_result(dist, found + added)
            added += len(vectors)
    if heap is None:
        return id_parts, None
    heap.finalize()
    return id_parts, Truth.from_knn(queries, heap.D, heap.I, k_eff, keep_max)


def exact_knn(
    queries: np.ndarray, vectors: np.ndarray, k: int, metric: str, gpu: GpuHelper | None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest ``vectors`` of each query (on the GPU with a helper)."""
    if gpu is not None:
        return gpu.knn(queries, vectors, k, METRICS[metric])
    return faiss.knn(queries, vectors, k, metric=METRICS[metric])


@dataclass
class Filled:
    """The index with every row but the recall queries: where it is, the ids in row
    order, the queries' exact neighbours, and the sharded build's record (if sharded)."""

    index: faiss.Index
    on_gpu: bool
    id_parts: list[np.ndarray]
    truth: Truth | None
    sharding: dict = field(default_factory=dict)


def fill(
    plan: BuildPlan,
    queries: np.ndarray,
    helper: GpuHelper | None,
    lists: Path | None,
    progress: bool,
    batch_size: int,
) -> Filled:
    """The add pass: here (on a GPU copy when one fits), or in shards on Ray; into lists
    on disk at ``lists`` when given."""
    if plan.sharding is not None:
        added = sharded_add_pass(plan, queries, progress, lists)
        return Filled(added.index, False, added.id_parts, added.truth, added.record)
    work, on_gpu = plan.index, False
    if lists is not None:
        lists_to_disk(work, lists)
    elif helper is not None:
        clone = to_gpu(plan.index, plan.gpu_bytes)  # None: no room or no GPU version
        if clone is not None:
            work, on_gpu = clone, True
    id_parts, truth = add_pass(plan, work, queries, helper, progress, batch_size)
    return Filled(work, on_gpu, id_parts, truth)


def lists_path(plan: BuildPlan) -> Path:
    """A new on-disk lists file in the index folder (named by the save that keeps it;
    the next save removes it otherwise)."""
    folder = index_dir(plan.ds)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"lists-{uuid.uuid4().hex[:8]}{LISTS_SUFFIX}"
