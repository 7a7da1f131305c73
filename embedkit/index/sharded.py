"""The add pass of an index build spread over a Ray cluster (``engine="ray"``).

The driver trains the index on a sample as a build on one machine does, then splits the
dataset's rows into contiguous shards (runs of part files, a part split by row groups
where that balances them). Each shard is a Ray task that reads its rows from the parts,
adds them to an empty copy of the trained index and finds the recall queries' exact
neighbours among them (:mod:`~.shard_add`); the driver merges the shards in order
(:mod:`~.shard_merge`) and the build goes on as on one machine: tune, add the held-out
queries, save. Merged in order, the shards give the index one machine would have built:
the same lists, codes and row numbers, so the same results and recall.

Every node must read the dataset's parts at the same path: a shared file system, or
object storage (``s3://``, ...) with credentials on every node.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from embedkit.errors import EmbedkitError, InputError
from embedkit.index.ondisk import lists_to_disk
from embedkit.index.plan import BuildPlan
from embedkit.index.recall_set import TRUTH_DEPTH
from embedkit.index.select import progress_bar
from embedkit.index.shard_add import Piece, ShardResult, ShardTask, add_shard
from embedkit.index.shard_merge import from_bytes, merge_shard, to_bytes
from embedkit.index.tune import Truth
from embedkit.ray_support import connect, import_ray, one_line_error
from embedkit.store.vectors import PartStat

__all__ = ["ShardedAdd", "plan_shards", "shard_count", "sharded_add_pass"]

#: rows below which a shard is not worth a task of its own (default shard count only)
MIN_SHARD_ROWS = 50_000


@dataclass
class ShardedAdd:
    """What the sharded add pass leaves: the merged index, its ids in row order, the
    queries' exact neighbours (None without queries), and the record for ``index.json``."""

    index: faiss.Index
    id_parts: list[np.ndarray]
    truth: Truth | None
    record: dict[str, Any] = field(default_factory=dict)


def shard_count(requested: int | None, n: int, cpus: float) -> int:
    """Shards for ``n`` rows: the requested number, else two per CPU of the cluster, but
    no shard smaller than ``MIN_SHARD_ROWS`` rows (and at least one)."""
    if requested is not None:
        if requested < 1:
            raise InputError(f"shards must be >= 1, got {requested}")
        return int(min(requested, n))
    return int(max(1, min(2 * int(cpus), n // MIN_SHARD_ROWS)))


def plan_shards(
    parts: list[PartStat], query_pos: np.ndarray, count: int, metric: str, dim: int
) -> list[ShardTask]:
    """``count`` contiguous shards of the rows of ``parts`` (in stream order), balanced by
    rows; the sorted ``query_pos`` are held out of the shards they fall in."""
    ends = np.cumsum([0, *(s.rows for s in parts)])
    n = int(ends[-1])
    bounds = np.linspace(0, n, count + 1).round().astype(np.int64)
    tasks = []
    for number, (start, stop) in enumerate(itertools.pairwise(bounds)):
        pieces = []
        for i, stat in enumerate(parts):
            lo, hi = max(start, ends[i]), min(stop, ends[i + 1])
            if lo < hi:
                first, last = int(lo - ends[i]), int(hi - ends[i])
                pieces.append(Piece(str(stat.path), stat.size, first, last))
        held_lo, held_hi = np.searchsorted(query_pos, [start, stop])
        held = query_pos[held_lo:held_hi] - start
        tasks.append(
            ShardTask(number, tuple(pieces), int(start), int(start - held_lo), held, metric, dim)
        )
    return tasks


def _on_worker(
    task: ShardTask, trained: np.ndarray, queries: np.ndarray, depth: int
) -> ShardResult:
    """A shard as a Ray task: :func:`add_shard`, with the node it ran on."""
    import ray

    result = add_shard(task, trained, queries, depth)
    result.node = ray.get_runtime_context().get_node_id()
    return result


def _run(
    tasks: list[ShardTask], trained: np.ndarray, queries: np.ndarray, depth: int, ray: Any
) -> Iterator[ShardResult]:
    """The shards' results in shard order, all tasks running meanwhile."""
    # SPREAD: shards read their parts in parallel from as many nodes as there are
    remote = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(_on_worker)
    trained_ref, queries_ref = ray.put(trained), ray.put(queries)
    refs = [remote.remote(task, trained_ref, queries_ref, depth) for task in tasks]
    for ref in refs:
        try:
            yield ray.get(ref)
        except EmbedkitError:
            raise
        except Exception as exc:  # a worker's failure (RayTaskError): one line
            raise one_line_error(exc) from exc


def sharded_add_pass(
    plan: BuildPlan, queries: np.ndarray, progress: bool, lists: Path | None = None
) -> ShardedAdd:
    """Pass 2 on Ray: every row but the queries added in shards, merged in order (into
    inverted lists on disk in the file ``lists`` when given)."""
    if plan.parts is None:
        raise InputError("a sharded build needs the whole dataset, not a filtered view")
    ray = import_ray()
    started = connect(ray, plan.sharding.address)
    try:
        count = shard_count(plan.sharding.shards, plan.n, ray.cluster_resources().get("CPU", 1))
        tasks = plan_shards(plan.parts, plan.query_pos, count, plan.metric, plan.ds.dim)
        kk = min(max(2, TRUTH_DEPTH) * plan.k, plan.n - len(queries))
        return _merged(plan, tasks, queries, kk, ray, progress, lists)
    finally:
        if started:
            ray.shutdown()


def _merged(
    plan: BuildPlan, tasks: list[ShardTask], queries: np.ndarray, kk: int, ray: Any,
    progress: bool, lists: Path | None,
) -> ShardedAdd:  # fmt: skip
    """Run the shards and merge them, in order, into a copy of the trained index."""
    began = time.perf_counter()
    merged = from_bytes(to_bytes(plan.index))
    if lists is not None:
        lists_to_disk(merged, lists)
    keep_max = plan.metric == "cosine"
    heap = faiss.ResultHeap(len(queries), kk, keep_max=keep_max) if len(queries) else None
    id_parts, shards, merge_seconds = [], [], 0.0
    with progress_bar(progress, plan.n, "add (shards)") as bar:
        for result in _run(tasks, to_bytes(plan.index), queries, kk, ray):
            tick = time.perf_counter()
            merge_shard(merged, from_bytes(result.index))
            merge_seconds += time.perf_counter() - tick
            id_parts.append(result.ids)
            if heap is not None:
                heap.add_result(result.dist, result.labels)
            task = tasks[result.number]
            seconds = round(result.seconds, 3)
            added = task.rows - len(task.held)
            shards.append({"rows": added, "seconds": seconds, "node": result.node})
            bar.update(task.rows)
    nodes = len({s["node"] for s in shards})
    if progress:
        tqdm.write(f"added {plan.n:,} rows in {len(tasks)} shards on {nodes} node(s)")
    record = {
        "engine": "ray", "shards": len(tasks), "nodes": nodes,
        "add_seconds": round(time.perf_counter() - began, 3),
        "merge_seconds": round(merge_seconds, 3), "per_shard": shards,
    }  # fmt: skip
    truth = None
    if heap is not None:
        heap.finalize()
        k_eff = min(plan.k, plan.n - len(queries))
        truth = Truth.from_knn(queries, heap.D, heap.I, k_eff, keep_max)
    return ShardedAdd(merged, id_parts, truth, record)
