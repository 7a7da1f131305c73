"""Building a FAISS index over a latent dataset, in named steps:

plan (choose the index: for ``auto``, by measuring candidates on a sample, see
:mod:`embedkit.index.select`; draw training and recall-query rows) -> sample pass
(collect them, train) -> add pass (add the rest, exact ground truth for the queries on
the way) -> tune (raise search parameters until the recall bound reaches the target) ->
final add (the held-out rows, in two halves with a recall check between) -> save.
On the way, the parameters a filtered search needs are measured (recall@(10·k), see
:mod:`embedkit.index.filtered`), and the recall queries are kept with their exact
neighbours and the part of each row recorded, so the index can later be updated in place
(:mod:`embedkit.index.update`).

Vectors stream from the Parquet parts; nothing holds the whole dataset in memory but the
index itself (and bounded samples). ``auto``'s candidates are in :mod:`~.choose`. The add
pass (:mod:`~.fill`) runs here, or in shards on a Ray cluster (``engine="ray"``,
:mod:`~.sharded`); the inverted lists may live in a file (``on_disk``, :mod:`~.ondisk`)."""

from __future__ import annotations

import json
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from embedkit.errors import InputError
from embedkit.index.choose import IndexChoice
from embedkit.index.fill import exact_knn, fill, lists_path
from embedkit.index.filtered import calibrate_filtered
from embedkit.index.gpu import GpuHelper
from embedkit.index.info import IndexInfo
from embedkit.index.loaded import LoadedIndex
from embedkit.index.ondisk import faiss_quiet
from embedkit.index.parts import part_of_positions, part_records
from embedkit.index.persist import save_index
from embedkit.index.plan import (
    TARGET_RECALL,
    BuildPlan,
    Sharding,
    new_index,
    plan_build,
    training_rows,
)
from embedkit.index.recall_set import RecallSet
from embedkit.index.select import collect_rows
from embedkit.index.tune import (
    AfterAdd,
    Truth,
    Tuned,
    add_held_out,
    set_params,
    tune,
    untuned_params,
)
from embedkit.store.dataset import LatentDataset
from embedkit.version import __version__

__all__ = ["TARGET_RECALL", "BuildPlan", "build_index", "plan_build"]


def sample_pass(
    plan: BuildPlan, gpu: GpuHelper | None, progress: bool, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: collect the training sample (and train ``plan.index``, its k-means on the
    GPU when there is one) and the recall queries. Returns the queries and their ids.

    The CPU index is trained before any GPU copy is made, so every shard of an index
    split over several GPUs gets the same centroids."""
    (train, _), held = collect_rows(
        plan.ds, plan.metric, [plan.train_pos, plan.query_pos], progress, batch_size
    )
    if len(plan.train_pos):
        if progress:
            tqdm.write(f"training {plan.choice.factory} on {len(train):,} vectors")
        if gpu is not None:
            gpu.train(plan.index, train)
        else:
            plan.index.train(train)
    return held


def tune_pass(
    plan: BuildPlan,
    work: faiss.Index,
    queries: np.ndarray,
    truth: Truth | None,
    on_gpu: bool,
    target_recall: float,
) -> Tuned | None:
    """Search parameters and the recall they reach (None: not measured)."""
    if plan.exact:
        return Tuned({}, 1.0, 1.0, np.ones(0))
    if truth is None:  # recall not measured: generous defaults
        set_params(work, untuned_params(work, plan.k))
        return None
    warn = None if plan.selection is not None else plan.choice.factory  # auto: _fallback
    return tune(work, queries, truth, target_recall, on_gpu, warn=warn)


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
    engine: str = "local",
    shards: int | None = None,
    ray_address: str | None = None,
    on_disk: bool = False,
) -> LoadedIndex:
    """Build a FAISS index over a latent dataset, measure its recall, and save it.

    Vectors are streamed from the Parquet parts (two passes for trained or approximate
    indexes: a sample pass, then an add pass that also computes exact ground truth for
    ``recall_sample`` query rows; ``auto`` measures its candidates on a sample first, see
    :mod:`embedkit.index.select`). Approximate indexes get ``nprobe``/``efSearch``/
    ``k_factor_rf`` raised until the lower confidence bound of recall@k reaches the target.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset`.
        metric: ``"cosine"`` (normalize, inner product) or ``"l2"`` (squared L2).
        kind: ``auto``, ``flat``, ``ivf``, ``hnsw``, ``ivfpq``, ``ivfsq`` or a faiss factory.
        memory_budget: bytes (or ``"2GB"``) the index may use; steers ``auto``/``ivfpq``
            (default: half the RAM; on a GPU build, what the GPUs can hold).
        recall_sample: query rows drawn from the data to measure recall (0: skip; then
            ``auto`` follows its rules instead of measuring).
        k: the k of recall@k.
        gpu: ``None`` uses a GPU when faiss sees one, ``True`` requires one, ``False``
            forces CPU. The index is filled on the GPU where it fits (sharded over
            several if one cannot hold it), else on the CPU with a warning.
        progress: show tqdm progress bars.
        save: write ``<latents>/index/``; default: yes unless ``latents`` is a filtered view.
        target_recall: the recall the search parameters are tuned to reach.
        batch_size: rows per streamed batch.
        engine: ``"local"`` adds every row here; ``"ray"`` adds them in ``shards`` Ray
            tasks on the cluster at ``ray_address`` and merges the shards (IVF and flat
            kinds; CPU; see :mod:`embedkit.index.sharded`). Same index, same recall.
        shards: the number of shards (None: two per CPU of the cluster, each of at least
            50,000 rows).
        ray_address: the Ray cluster (None: ``$RAY_ADDRESS``, else a local Ray).
        on_disk: keep the inverted lists in a ``.ivfdata`` file in the index folder,
            memory-mapped, instead of RAM (IVF kinds without refine or fast-scan codes;
            ``auto`` adapts its choice; CPU). See :mod:`embedkit.index.ondisk`.

    Example:
        >>> idx = build_index("latents/", metric="cosine", kind="auto")
        >>> idx.info.kind, idx.info.recall, idx.info.params
    """
    start = time.perf_counter()
    plan = plan_build(
        latents, metric, kind, memory_budget, recall_sample, k, gpu, target_recall, progress,
        batch_size, _sharding(engine, shards, ray_address), on_disk,
    )  # fmt: skip
    save = _should_save(plan.ds, save)
    loaded = _build(plan, progress, batch_size, target_recall, recall_sample)
    while (fallback := _fallback(plan, loaded.info)) is not None:  # auto's pick fell short
        if progress:
            tqdm.write(f"{loaded.info.factory} fell short on all rows; building {fallback.factory}")
        plan, loaded = _with_choice(plan, fallback), None  # frees the one that fell short
        loaded = _build(plan, progress, batch_size, target_recall, recall_sample)
    loaded.info.build_seconds = round(time.perf_counter() - start, 3)
    if save:
        loaded.path = save_index(loaded)
    return loaded


def _build(
    plan: BuildPlan, progress: bool, batch_size: int, target_recall: float, recall_sample: int
) -> LoadedIndex:
    """Train, fill and tune the planned index; the held-out rows go in last, checked."""
    helper = GpuHelper() if plan.gpu else None
    queries, query_ids = sample_pass(plan, helper, progress, batch_size)
    lists = lists_path(plan) if plan.on_disk else None
    with faiss_quiet() if lists is not None else nullcontext():
        filled = fill(plan, queries, helper, lists, progress, batch_size)
        work, on_gpu = filled.index, filled.on_gpu
        tuned = tune_pass(plan, work, queries, filled.truth, on_gpu, target_recall)
        held = _add_queries(plan, work, queries, filled.truth, tuned, helper, on_gpu, target_recall)
    id_parts = [*filled.id_parts, *(query_ids[part] for part in held.order)]
    if progress and held.tuned is not None:
        params = held.tuned.params or "exact search"
        tqdm.write(f"recall@{plan.k} = {held.tuned.recall:.3f} with {params}")
    info = _info(plan, held, len(queries), recall_sample, target_recall, on_gpu, work)
    info.sharding = filled.sharding
    ids = np.concatenate(id_parts) if id_parts else np.array([], dtype=object)
    return LoadedIndex(
        index=work, ids=ids, info=info, dataset=plan.ds, on_gpu=on_gpu,
        gpu=None if plan.gpu else False, part_of=_part_of(plan, held.order), recall=held.recall,
    )  # fmt: skip


@dataclass
class HeldOut:
    """The recall queries once added: the final tuning, the check made while adding them,
    the order they went in, the recall set kept, and the filtered-search parameters."""

    tuned: Tuned | None
    check: AfterAdd = field(default_factory=AfterAdd)
    order: list[np.ndarray] = field(default_factory=list)
    recall: RecallSet | None = None
    filter_params: dict[str, float] = field(default_factory=dict)


def _add_queries(
    plan: BuildPlan,
    work: faiss.Index,
    queries: np.ndarray,
    truth: Truth | None,
    tuned: Tuned | None,
    helper: GpuHelper | None,
    on_gpu: bool,
    target: float,
) -> HeldOut:
    """Add the held-out queries (in two checked halves when recall was measured), after
    measuring the filtered-search parameters on them; keep them as the recall set."""
    if truth is None or tuned is None:
        if len(queries):
            work.add(queries)
        return HeldOut(tuned, order=[np.arange(len(queries))])
    filter_params = calibrate_filtered(work, queries, truth, tuned.params, target, on_gpu)
    first_row = int(work.ntotal)
    knn = partial(exact_knn, metric=plan.metric, gpu=helper)
    tuned, check, order = add_held_out(work, queries, truth, tuned, knn, target, on_gpu)
    labels = np.empty(len(queries), dtype=np.int64)
    labels[np.concatenate(order)] = first_row + np.arange(len(queries))
    recall = RecallSet.from_build(queries, labels, truth, knn)
    return HeldOut(tuned, check, order, recall, filter_params)


def _part_of(plan: BuildPlan, order: list[np.ndarray]) -> np.ndarray | None:
    """The part of each faiss row: the rows went in in stream order, the queries last."""
    if plan.parts is None:
        return None
    rest = np.ones(plan.n, dtype=bool)
    rest[plan.query_pos] = False
    positions = np.concatenate([np.flatnonzero(rest), *(plan.query_pos[o] for o in order)])
    return part_of_positions([s.rows for s in plan.parts], positions)


def _fallback(plan: BuildPlan, info: IndexInfo) -> IndexChoice | None:
    """auto's next candidate when the one built fell short of the target on all rows."""
    lower = info.recall_lower
    if plan.selection is None or lower is None or lower >= info.target_recall:
        return None
    nxt = plan.selection.fall_back(info.recall, info.recall_lower)
    if nxt is None:
        warnings.warn(
            f"{info.factory} reaches recall@{info.k}={info.recall:.3f} (lower bound "
            f"{info.recall_lower:.3f}) < {info.target_recall}, and so did every candidate",
            stacklevel=3,
        )
    return nxt


def _with_choice(plan: BuildPlan, choice: IndexChoice) -> BuildPlan:
    """``plan`` for another index: the same recall queries, training rows drawn anew."""
    index = new_index(choice, plan.ds.dim, plan.metric)
    rng = np.random.default_rng(len(plan.selection.fallbacks) if plan.selection else 1)
    train_pos = np.sort(rng.choice(plan.n, training_rows(index, plan.n), replace=False))
    queries = plan.query_pos[:0] if choice.factory == "Flat" else plan.query_pos
    return replace(plan, choice=choice, index=index, train_pos=train_pos, query_pos=queries)


def _sharding(engine: str, shards: int | None, address: str | None) -> Sharding | None:
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be local or ray, got {engine!r}")
    if engine == "local" and (shards is not None or address is not None):
        raise InputError("shards and ray_address need engine='ray' (--engine ray)")
    return Sharding(shards, address) if engine == "ray" else None


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
    held: HeldOut,
    n_queries: int,
    recall_sample: int,
    target_recall: float,
    on_gpu: bool,
    work: faiss.Index,
) -> IndexInfo:
    tuned, check = held.tuned, held.check
    params = tuned.params if tuned is not None else untuned_params(work, plan.k)
    return IndexInfo(
        metric=plan.metric,
        kind=plan.choice.kind,
        requested_kind=plan.kind,
        factory=plan.choice.factory,
        reason=plan.choice.reason,
        params={name: _num(v) for name, v in params.items()},
        ntotal=int(work.ntotal),
        dim=plan.ds.dim,
        recall=None if tuned is None else round(float(tuned.recall), 4),
        recall_lower=None if tuned is None else round(float(tuned.lower), 4),
        recall_after_add=None if check.recall is None else round(check.recall, 4),
        retuned_after_add=check.retuned,
        k=plan.k,
        recall_queries=0 if plan.exact else n_queries,
        target_recall=target_recall,
        recall_sample=recall_sample,
        build_seconds=0.0,
        selection=plan.selection.as_dict() if plan.selection is not None else {},
        fingerprint=plan.fingerprint,
        backbone=json.loads(plan.ds.backbone.to_json()),
        memory_budget=plan.budget,
        estimated_bytes=plan.choice.estimated_bytes,
        built_on="gpu" if on_gpu else "cpu",
        embedkit_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        parts=part_records(plan.parts) if plan.parts is not None else [],
        chosen_rows=plan.n,
        filter_params={name: _num(v) for name, v in held.filter_params.items()},
    )


def _num(value: float) -> float:
    return int(value) if float(value).is_integer() else float(value)
