"""Building a FAISS index over a latent dataset, in named steps:

plan (choose the index, draw training and recall-query rows) -> sample pass (collect
them, train) -> add pass (add the rest, exact ground truth for the queries on the way)
-> tune (raise search parameters until recall is reached) -> save.

Vectors stream from the Parquet parts; nothing holds the whole dataset in memory but
the index itself. The ``auto`` rules are in :mod:`embedkit.index.choose`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from embedkit.errors import InputError
from embedkit.index.choose import (
    MAX_TRAIN_ROWS,
    TRAIN_POINTS_PER_CENTROID,
    IndexChoice,
    choose_index,
    factory_for_kind,
    parse_memory,
)
from embedkit.index.gpu import GpuHelper, to_gpu, use_gpu
from embedkit.index.info import IndexInfo, view_fingerprint
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import METRICS, prepare_vectors
from embedkit.index.persist import save_index
from embedkit.index.tune import set_params, tune, untuned_params
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.version import __version__

__all__ = ["TARGET_RECALL", "BuildPlan", "build_index", "plan_build"]

TARGET_RECALL = 0.95


@dataclass
class BuildPlan:
    """What :func:`build_index` will build, decided before any vector is read."""

    ds: LatentDataset
    metric: str
    kind: str
    k: int
    choice: IndexChoice
    index: faiss.Index  # the empty CPU index
    n: int
    query_pos: np.ndarray  # sorted rows held out as recall queries (may be empty)
    train_pos: np.ndarray  # sorted rows sampled for training (empty: no training)
    gpu: bool
    budget: int | None
    fingerprint: str

    @property
    def exact(self) -> bool:
        return self.choice.factory == "Flat"


def _resolve_choice(kind: str, n: int, dim: int, budget: int | None, gpu: bool) -> IndexChoice:
    if kind == "auto":
        return choose_index(n, dim, budget, gpu)
    return factory_for_kind(kind, n, dim, budget)


def _new_index(choice: IndexChoice, dim: int, metric: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, choice.factory, METRICS[metric])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise InputError(
            f"unknown index kind {choice.factory!r}: use auto, flat, ivf, hnsw, ivfpq or a "
            f"faiss factory string such as 'IVF256,SQ8' (faiss: {reason})"
        ) from None


def _train_rows(index: faiss.Index, n: int) -> int:
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    wanted = TRAIN_POINTS_PER_CENTROID * ivf.nlist if ivf is not None else 65_536
    return int(min(n, max(wanted, 10_000), MAX_TRAIN_ROWS))


def plan_build(
    latents: str | Path | LatentDataset,
    metric: str = "cosine",
    kind: str = "auto",
    memory_budget: int | str | None = None,
    recall_sample: int = 1000,
    k: int = 10,
    gpu: bool | None = None,
) -> BuildPlan:
    """Check the arguments, choose the index and draw the training and query rows."""
    ds = open_latents(latents)
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported; use cosine or l2")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    budget = parse_memory(memory_budget)
    fingerprint = view_fingerprint(ds)  # before reading: rows added meanwhile make it stale
    n = len(ds)
    if n == 0:
        raise InputError(f"no rows to index in {ds.path} (empty dataset or filter matched none)")
    on_gpu = use_gpu(gpu)
    choice = _resolve_choice(kind, n, ds.dim, budget, on_gpu)
    index = _new_index(choice, ds.dim, metric)
    rng = np.random.default_rng(0)
    exact = choice.factory == "Flat"
    n_queries = 0 if exact or n < 2 else min(max(int(recall_sample), 0), max(n // 10, 1))
    query_pos = np.sort(rng.choice(n, n_queries, replace=False))
    n_train = _train_rows(index, n)
    train_pos = np.sort(rng.choice(n, n_train, replace=False))
    return BuildPlan(
        ds, metric, kind, k, choice, index, n, query_pos, train_pos, on_gpu, budget, fingerprint
    )


def _batches(
    ds: LatentDataset, metric: str, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(offset, ids, prepared vectors)`` for each streamed batch."""
    offset = 0
    for batch in ds.iter_batches(batch_size=batch_size):
        vectors = prepare_vectors(batch.vectors, metric, f"latents in {ds.path}")
        yield offset, np.asarray(batch.ids, dtype=object), vectors
        offset += len(vectors)


def _take_positions(positions: np.ndarray, offset: int, values: np.ndarray) -> np.ndarray:
    """The entries of one batch (starting at row ``offset``) at the sorted ``positions``."""
    lo, hi = np.searchsorted(positions, [offset, offset + len(values)])
    return values[positions[lo:hi] - offset]


def _bar(progress: bool, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not progress)


def sample_pass(
    plan: BuildPlan, work: faiss.Index, progress: bool, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: collect the training sample (and train ``work``) and the recall queries.
    Returns the queries and their ids."""
    ds, dim = plan.ds, plan.ds.dim
    if not len(plan.train_pos) and not len(plan.query_pos):
        return np.zeros((0, dim), np.float32), np.array([], dtype=object)
    train, queries, query_ids = [], [], []
    with _bar(progress, plan.n, "sample") as bar:
        for offset, ids, vectors in _batches(ds, plan.metric, batch_size):
            train.append(_take_positions(plan.train_pos, offset, vectors))
            queries.append(_take_positions(plan.query_pos, offset, vectors))
            query_ids.append(_take_positions(plan.query_pos, offset, ids))
            bar.update(len(vectors))
    if len(plan.train_pos):
        sample = np.concatenate(train)
        del train
        if progress:
            tqdm.write(f"training {plan.choice.factory} on {len(sample):,} vectors")
        work.train(sample)
    return np.concatenate(queries), np.concatenate(query_ids)


def add_pass(
    plan: BuildPlan,
    work: faiss.Index,
    queries: np.ndarray,
    gpu: GpuHelper | None,
    progress: bool,
    batch_size: int,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Pass 2: add every row but the queries to ``work``, computing the queries' exact
    k nearest neighbours on the way. Returns the ids in faiss row order and the true
    neighbours (faiss rows; None without queries)."""
    k_eff = min(plan.k, plan.n - len(queries))
    keep_max = plan.metric == "cosine"
    heap = faiss.ResultHeap(len(queries), k_eff, keep_max=keep_max) if len(queries) else None
    id_parts: list[np.ndarray] = []
    added = 0
    with _bar(progress, plan.n, "add") as bar:
        for offset, ids, vectors in _batches(plan.ds, plan.metric, batch_size):
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
                dist, found = _knn(queries, vectors, min(k_eff, len(vectors)), plan.metric, gpu)
                heap.add_result(dist, found + added)
            added += len(vectors)
    if heap is None:
        return id_parts, None
    heap.finalize()
    return id_parts, heap.I


def _knn(
    queries: np.ndarray, vectors: np.ndarray, k: int, metric: str, gpu: GpuHelper | None
) -> tuple[np.ndarray, np.ndarray]:
    if gpu is not None:
        return gpu.knn(queries, vectors, k, METRICS[metric])
    return faiss.knn(queries, vectors, k, metric=METRICS[metric])


def tune_pass(
    plan: BuildPlan,
    work: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray | None,
    on_gpu: bool,
    target_recall: float,
) -> tuple[dict[str, float], float | None]:
    """Search parameters and the recall they reach (None: not measured)."""
    if plan.exact:
        return {}, 1.0
    k_eff = min(plan.k, plan.n - len(queries))
    if truth is None:  # recall not measured: generous defaults
        params = untuned_params(work, k_eff)
        set_params(work, params)
        return params, None
    params, recall = tune(work, queries, truth, k_eff, target_recall, on_gpu)
    if recall < target_recall:
        warnings.warn(
            f"{plan.choice.factory} reaches recall@{plan.k}={recall:.3f} < {target_recall}; "
            "use kind='ivf' or 'hnsw' or a larger memory budget",
            stacklevel=3,
        )
    return params, recall


def build_index(
    latents: str | Path | LatentDataset,
    metric: str = "cosine",
    kind: str = "auto",
    memory_budget: int | str | None = None,
    recall_sample: int = 1000,
    k: int = 10,
    gpu: bool | None = None,
    progress: bool = True,
    save: bool | None = None,
    target_recall: float = TARGET_RECALL,
    batch_size: int = 65_536,
) -> LoadedIndex:
    """Build a FAISS index over a latent dataset, measure its recall, and save it.

    Vectors are streamed from the Parquet parts (two passes for trained or approximate
    indexes: a sample pass, then an add pass that also computes exact ground truth for
    ``recall_sample`` query rows). Approximate indexes get ``nprobe``/``efSearch``/
    ``k_factor_rf`` raised until recall@k >= ``target_recall``.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset`.
        metric: ``"cosine"`` (normalize, inner product) or ``"l2"`` (squared L2).
        kind: ``auto``, ``flat``, ``ivf``, ``hnsw``, ``ivfpq`` or any faiss factory string.
        memory_budget: bytes (or ``"2GB"``) the index may use; steers ``auto``/``ivfpq``.
        recall_sample: query rows drawn from the data to measure recall (0: skip).
        k: the k of recall@k.
        gpu: ``None`` uses a GPU when faiss sees one, ``False`` forces CPU.
        progress: show tqdm progress bars.
        save: write ``<latents>/index/``; default: yes unless ``latents`` is a filtered view.
        target_recall: the recall the search parameters are tuned to reach.
        batch_size: rows per streamed batch.

    Example:
        >>> idx = build_index("latents/", metric="cosine", kind="auto")
        >>> idx.info.kind, idx.info.recall, idx.info.params
    """
    start = time.perf_counter()
    plan = plan_build(latents, metric, kind, memory_budget, recall_sample, k, gpu)
    save = _should_save(plan.ds, save)
    helper = GpuHelper() if plan.gpu else None
    work, on_gpu = plan.index, False  # work: the index trained, filled and tuned
    if helper is not None:
        clone = to_gpu(plan.index)
        if clone is not None:
            work, on_gpu = clone, True
        elif not plan.index.is_trained:
            helper.clustering_index(plan.index)  # at least the k-means runs on the GPU
    queries, query_ids = sample_pass(plan, work, progress, batch_size)
    id_parts, truth = add_pass(plan, work, queries, helper, progress, batch_size)
    params, recall = tune_pass(plan, work, queries, truth, on_gpu, target_recall)
    if len(queries):
        work.add(queries)  # the held-out rows go in last
        id_parts.append(query_ids)
    if progress and recall is not None:
        tqdm.write(f"recall@{k} = {recall:.3f} with {params or 'exact search'}")
    info = _info(plan, params, recall, len(queries), recall_sample, target_recall, on_gpu)
    info.ntotal = int(work.ntotal)
    info.build_seconds = round(time.perf_counter() - start, 3)
    ids = np.concatenate(id_parts) if id_parts else np.array([], dtype=object)
    loaded = LoadedIndex(index=work, ids=ids, info=info, dataset=plan.ds, on_gpu=on_gpu)
    if save:
        loaded.path = save_index(loaded)
    return loaded


def _should_save(ds: LatentDataset, save: bool | None) -> bool:
    if save is None:
        return ds.expression is None
    if save and ds.expression is not None:
        raise InputError(
            "a filtered view cannot be saved as the dataset's index; build on the whole "
            "dataset and filter the results, or pass save=False"
        )
    return save


def _info(
    plan: BuildPlan,
    params: dict[str, float],
    recall: float | None,
    n_queries: int,
    recall_sample: int,
    target_recall: float,
    on_gpu: bool,
) -> IndexInfo:
    return IndexInfo(
        metric=plan.metric,
        kind=plan.choice.kind,
        requested_kind=plan.kind,
        factory=plan.choice.factory,
        reason=plan.choice.reason,
        params={name: _num(v) for name, v in params.items()},
        ntotal=0,
        dim=plan.ds.dim,
        recall=None if recall is None else round(float(recall), 4),
        k=plan.k,
        recall_queries=0 if plan.exact else n_queries,
        target_recall=target_recall,
        recall_sample=recall_sample,
        build_seconds=0.0,
        fingerprint=plan.fingerprint,
        backbone=json.loads(plan.ds.backbone.to_json()),
        memory_budget=plan.budget,
        estimated_bytes=plan.choice.estimated_bytes,
        built_on="gpu" if on_gpu else "cpu",
        embedkit_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _num(value: float) -> float:
    return int(value) if float(value).is_integer() else float(value)
