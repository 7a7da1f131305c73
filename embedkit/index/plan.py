"""The plan of an index build, decided before any vector is read (but ``auto``'s sample):
the arguments checked, the index chosen, the training and recall-query rows drawn, and
whether a GPU takes part (its memory then sets the default budget)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from embedkit.errors import InputError
from embedkit.index.choose import (
    IndexChoice,
    candidate_choices,
    choose_index,
    factory_for_kind,
    parse_memory,
    train_rows,
)
from embedkit.index.gpu import default_gpu_budget, use_gpu
from embedkit.index.info import view_fingerprint
from embedkit.index.metric import METRICS
from embedkit.index.ondisk import check_on_disk, on_disk_choice
from embedkit.index.select import (
    Selection,
    collect_rows,
    measures_auto,
    sample_positions,
    select_index,
)
from embedkit.index.shard_merge import check_shardable
from embedkit.location import is_remote
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.vectors import PartStat, part_stats

__all__ = ["TARGET_RECALL", "BuildPlan", "Sharding", "new_index", "plan_build", "training_rows"]

TARGET_RECALL = 0.95


@dataclass(frozen=True)
class Sharding:
    """A build whose add pass runs in ``shards`` Ray tasks (None: two per cluster CPU)
    on the cluster at ``address`` (None: ``$RAY_ADDRESS``, else a local Ray)."""

    shards: int | None = None
    address: str | None = None


@dataclass
class BuildPlan:
    """What :func:`~embedkit.index.build.build_index` will build, decided before any
    vector is read. ``budget`` is the caller's (None: the default)."""

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
    selection: Selection | None = None
    parts: list[PartStat] | None = None  # the parts read (None: a filtered view)
    sharding: Sharding | None = None  # None: the add pass runs here
    on_disk: bool = False  # the inverted lists in a file (see embedkit.index.ondisk)

    @property
    def exact(self) -> bool:
        return self.choice.factory == "Flat"

    @property
    def gpu_bytes(self) -> int:
        """What the index will take on a GPU: the choice's estimate, else float32 vectors."""
        estimate = self.choice.estimated_bytes
        return int(estimate) if estimate is not None else 4 * self.ds.dim * self.n


def new_index(choice: IndexChoice, dim: int, metric: str) -> faiss.Index:
    """The empty faiss index of ``choice`` (an unknown factory string: a one-line error)."""
    try:
        return faiss.index_factory(dim, choice.factory, METRICS[metric])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise InputError(
            f"unknown index kind {choice.factory!r}: use auto, flat, ivf, hnsw, ivfpq, ivfsq or "
            f"a faiss factory string such as 'IVF256,SQ8' (faiss: {reason})"
        ) from None


def training_rows(index: faiss.Index, n: int) -> int:
    """Rows to train ``index`` on (0: it needs no training)."""
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    return train_rows(n, ivf.nlist if ivf is not None else None)


def plan_build(
    latents: str | Path | LatentDataset,
    metric: str = "cosine",
    kind: str = "auto",
    memory_budget: int | str | None = None,
    recall_sample: int = 1000,
    k: int = 10,
    gpu: bool | None = None,
    target_recall: float = TARGET_RECALL,
    progress: bool = False,
    batch_size: int = 65_536,
    sharding: Sharding | None = None,
    on_disk: bool = False,
) -> BuildPlan:
    """Check the arguments, choose the index (``auto``: by measurement, see
    :func:`measures_auto`) and draw the training and query rows. On a GPU build the
    default budget is what the GPUs can hold, not half the host's RAM. A sharded build
    chooses among the kinds whose shards merge (no HNSW), an on-disk one among IVF kinds
    whose lists faiss keeps on disk (:mod:`~.ondisk`); both train on the GPU when there
    is one and fill the index on the CPU (the workers', or lists on disk)."""
    ds = open_latents(latents)
    _check(ds, metric, k, sharding, on_disk)
    budget = parse_memory(memory_budget)
    stats = part_stats(ds.files)  # before reading: rows added meanwhile make it stale
    fingerprint = view_fingerprint(ds, stats)
    n = sum(s.rows for s in stats) if ds.expression is None else len(ds)
    if n == 0:
        raise InputError(f"no rows to index in {ds.path} (empty dataset or filter matched none)")
    on_gpu = use_gpu(gpu)  # sharded or on disk: the GPU trains; the index stays in RAM/disk
    gpu_holds_index = on_gpu and sharding is None and not on_disk
    sizing = default_gpu_budget() if budget is None and gpu_holds_index else budget
    layout = (sharding is not None, on_disk)
    selection = None
    if measures_auto(kind, n, ds.dim, on_gpu, recall_sample):  # measure on a sample
        ((sample, _),) = collect_rows(ds, metric, [sample_positions(n, ds.dim)], progress,
                                      batch_size, "select")  # fmt: skip
        choices = _candidates(candidate_choices(n, ds.dim, sizing), *layout)
        selection = select_index(sample, n, metric, k, target_recall, choices, progress)
        choice = selection.choice
    elif kind == "auto":
        choice = choose_index(n, ds.dim, sizing, on_gpu, sharded=sharding is not None or on_disk)
        if on_disk and choice.kind == "flat":
            choice = factory_for_kind("ivf", n, ds.dim, sizing)
    else:
        choice = factory_for_kind(kind, n, ds.dim, sizing)
    choice = on_disk_choice(choice) if on_disk else choice
    index = new_index(choice, ds.dim, metric)
    _check_index(index, choice, *layout)
    rng = np.random.default_rng(0)
    exact = choice.factory == "Flat"
    n_queries = 0 if exact or n < 2 else min(max(int(recall_sample), 0), max(n // 10, 1))
    query_pos = np.sort(rng.choice(n, n_queries, replace=False))
    train_pos = np.sort(rng.choice(n, training_rows(index, n), replace=False))
    return BuildPlan(
        ds, metric, kind, k, choice, index, n, query_pos, train_pos, on_gpu, budget, fingerprint,
        selection, stats if ds.expression is None else None, sharding, on_disk,
    )  # fmt: skip


def _check(
    ds: LatentDataset, metric: str, k: object, sharding: Sharding | None, on_disk: bool
) -> None:
    if sharding is not None and ds.expression is not None:
        raise InputError("a sharded build (engine ray) needs the whole dataset, not a filter")
    if on_disk and (ds.expression is not None or is_remote(ds.path)):
        raise InputError("an on-disk index needs the whole dataset in a local folder")
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported; use cosine or l2")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")


def _candidates(choices: list[IndexChoice], sharded: bool, on_disk: bool) -> list[IndexChoice]:
    """``auto``'s candidates for this layout: no HNSW in shards; IVF only, on disk."""
    if sharded:
        choices = [c for c in choices if c.kind != "hnsw"]
    if on_disk:
        adapted = [on_disk_choice(c) for c in choices if c.kind not in ("flat", "hnsw")]
        choices = list({c.factory: c for c in adapted}.values())
    return choices


def _check_index(index: faiss.Index, choice: IndexChoice, sharded: bool, on_disk: bool) -> None:
    if sharded:
        check_shardable(index, choice.factory)
    if on_disk:
        check_on_disk(index, choice.factory)
