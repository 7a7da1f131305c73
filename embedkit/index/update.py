"""Bringing a saved index up to date with its latents: the rows of new parts added, the
rows of removed or rewritten parts taken out (``remove_ids``), the id map kept in step,
recall measured again (and the search parameters raised if it fell) — or, when the index
no longer fits its choice, a rebuild. Which one, and why, is decided by
:mod:`embedkit.index.refresh` and recorded in ``index.json`` under ``update``.

The update works on a copy of the saved index read from disk (never on an index another
thread may be searching), on the CPU, and is saved so that the old index stays valid
until the new one is complete (:func:`~embedkit.index.persist.save_index`), under the
dataset's index lock: two updates never interleave.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedkit.errors import InputError
from embedkit.index.build import build_index
from embedkit.index.choose import parse_memory
from embedkit.index.gpu import use_gpu
from embedkit.index.info import IndexInfo, index_dir
from embedkit.index.load import load_index
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import METRICS
from embedkit.index.parts import PartChanges, part_of_positions, part_records
from embedkit.index.persist import (
    file_of,
    index_lock,
    read_index_files,
    read_info,
    read_recall,
    save_index,
)
from embedkit.index.recall_set import TRUTH_DEPTH, RecallSet, drawn_recall_set
from embedkit.index.recheck import Recheck, recheck_fresh, recheck_kept
from embedkit.index.refresh import Refresh, plan_refresh
from embedkit.index.removal import can_remove, new_numbers, remove_rows
from embedkit.index.select import progress_bar, stream_batches
from embedkit.index.tune import ivf_of, set_params
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.vectors import PartStat, fingerprint_of, part_stats

__all__ = ["FRESH_SHARE", "RECALL_KEEP", "update_index"]

#: an HNSW update measures recall on one in FRESH_SHARE new rows (at most the index's
#: number of recall queries), held out of the add until measured
FRESH_SHARE = 10
#: the kept recall queries are drawn anew (one streamed pass) once removed rows have
#: left fewer than this share of them usable
RECALL_KEEP = 0.5


def update_index(
    latents: str | Path | LatentDataset,
    metric: str | None = None,
    kind: str | None = None,
    memory_budget: int | str | None = None,
    recall_sample: int | None = None,
    k: int | None = None,
    target_recall: float | None = None,
    rebuild: bool = False,
    gpu: bool | None = None,
    progress: bool = False,
    batch_size: int = 65_536,
    engine: str = "local",
    shards: int | None = None,
    ray_address: str | None = None,
    on_disk: bool | None = None,
) -> LoadedIndex:
    """Bring the index in ``<latents>/index/`` up to date: add the rows of new parts and
    remove those of removed or rewritten parts when the index still fits its choice,
    else rebuild it (or build it, when there is none). ``info.update`` says which
    (``action``: ``update``, ``rebuild``, ``build`` or ``unchanged``) and why.

    Args:
        latents: the latent dataset folder (or an unfiltered :class:`LatentDataset`).
        metric, kind, memory_budget, recall_sample, k, target_recall: as for
            :func:`~embedkit.index.build.build_index`; None keeps the saved index's, and
            a value that differs from it means a rebuild.
        rebuild: rebuild even when an update would do.
        gpu, progress, batch_size: as for :func:`~embedkit.index.build.build_index`
            (an update in place runs on the CPU).
        engine, shards, ray_address: where a build or rebuild adds its rows, as for
            :func:`~embedkit.index.build.build_index` (an update in place runs here).
        on_disk: inverted lists on disk (see ``build_index``); None keeps the saved
            index's. An on-disk index is rebuilt, never updated in place.

    Example:
        >>> idx = update_index("latents/")           # after `embedkit embed` added images
        >>> idx.info.update["action"], idx.info.update["reason"]
    """
    start = time.perf_counter()
    ds = open_latents(latents)
    if ds.expression is not None:
        raise InputError("update_index needs the whole dataset, not a filtered view")
    requested = {
        "metric": metric, "requested_kind": kind, "memory_budget": parse_memory(memory_budget),
        "recall_sample": recall_sample, "k": k, "target_recall": target_recall,
    }  # fmt: skip
    with index_lock(ds):
        info, refresh, stats = _decide(ds, requested, rebuild)
        refresh, on_disk = _lists_layout(info, refresh, on_disk)
        loaded = None
        if refresh.action == "unchanged":
            try:
                loaded = load_index(ds, gpu=gpu)
            except InputError as exc:  # damaged or unchecked files: `embedkit index` mends it
                refresh = Refresh("rebuild", f"the saved index cannot be read ({exc})")
            else:
                loaded.info.update = {"action": "unchanged", "reason": refresh.reason}
                return loaded
        if refresh.action == "update":
            loaded, refresh = _in_place(ds, info, refresh, stats, progress, batch_size)
            if loaded is not None:
                loaded.gpu = gpu if use_gpu(gpu) else False
        if loaded is None:
            layout = {"engine": engine, "shards": shards, "ray_address": ray_address,
                      "on_disk": on_disk}  # fmt: skip
            loaded = _rebuild(ds, info, requested, gpu, progress, batch_size, layout)
            action = "rebuild" if info is not None else "build"
            loaded.info.update = {"action": action, "reason": refresh.reason}
        loaded.info.update["seconds"] = round(time.perf_counter() - start, 3)
        loaded.info.update["at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # an index that was there stays valid until the new one is complete
        loaded.path = save_index(loaded, update=info is not None, locked=True)
    return loaded


def _lists_layout(
    info: IndexInfo | None, refresh: Refresh, on_disk: bool | None
) -> tuple[Refresh, bool]:
    """``refresh`` made a rebuild when lists on disk (or in RAM) are asked for and the
    saved index has them elsewhere; and whether the lists go on disk."""
    saved = info is not None and file_of(info, "lists") is not None
    wanted = saved if on_disk is None else on_disk
    if info is not None and wanted != saved and refresh.action != "rebuild":
        where = "on disk" if wanted else "in RAM"
        return Refresh("rebuild", f"lists {where} asked for; the index has them elsewhere"), wanted
    return refresh, wanted


def _decide(
    ds: LatentDataset, requested: dict[str, Any], rebuild: bool
) -> tuple[IndexInfo | None, Refresh, list[PartStat]]:
    """The saved ``index.json`` (None: none, or unreadable), what to do, the parts' stats."""
    stats = part_stats(ds.files)
    try:
        info = read_info(ds)
    except InputError as exc:
        return None, Refresh("rebuild", f"the saved index is damaged ({exc})"), stats
    if info is None:
        return None, Refresh("rebuild", "no index yet"), stats
    if rebuild:
        return info, Refresh("rebuild", "a rebuild was asked for"), stats
    return info, plan_refresh(info, stats, requested), stats


def _rebuild(
    ds: LatentDataset,
    info: IndexInfo | None,
    requested: dict[str, Any],
    gpu: bool | None,
    progress: bool,
    batch_size: int,
    layout: dict[str, Any],
) -> LoadedIndex:
    """A new index with the saved settings, overridden by those ``requested``; built
    here or in shards on Ray, lists in RAM or on disk (``layout``: build_index's
    engine, shards, ray_address, on_disk)."""
    saved = {} if info is None else {name: getattr(info, name) for name in requested}
    settings = {**saved, **{name: v for name, v in requested.items() if v is not None}}
    options = {
        "metric": settings.get("metric", "cosine"), "kind": settings.get("requested_kind", "auto"),
        "memory_budget": settings.get("memory_budget"),
        "recall_sample": settings.get("recall_sample", 1000), "k": settings.get("k", 10),
        "target_recall": settings.get("target_recall", 0.95),
    }  # fmt: skip
    options = {name: value for name, value in options.items() if value is not None}
    return build_index(
        ds, gpu=gpu, progress=progress, save=False, batch_size=batch_size, **options, **layout
    )


@dataclass
class _Rows:
    """The rows of the index being updated: ids and parts in faiss row order, recall set."""

    ids: np.ndarray
    part_of: np.ndarray
    recall: RecallSet | None


def _in_place(
    ds: LatentDataset,
    info: IndexInfo,
    refresh: Refresh,
    stats: list[PartStat],
    progress: bool,
    batch_size: int,
) -> tuple[LoadedIndex | None, Refresh]:
    """The index updated in place, or None and why it must be rebuilt instead."""
    folder, changes = index_dir(ds), refresh.changes
    assert changes is not None
    try:
        files = read_index_files(folder, ds, False, info)
        rows = _Rows(files.ids, files.part_of, read_recall(folder, info))
    except InputError as exc:
        return None, Refresh("rebuild", f"the saved index cannot be read ({exc})")
    if rows.part_of is None:
        return None, Refresh("rebuild", "ids.parquet records no parts (an older embedkit)")
    index = files.index
    set_params(index, info.params)
    gone = np.flatnonzero(np.isin(rows.part_of, changes.gone))
    if len(gone) and not can_remove(index):
        return None, Refresh("rebuild", f"faiss cannot remove rows from {info.factory}")
    rows = _removed(index, rows, gone, changes)
    check = _added(index, ds, rows, changes.new, len(changes.kept), info, progress, batch_size)
    if not check.holds:
        why = f"recall@{info.k} fell to {check.lower:.3f} ({check.how}) even at {check.params}"
        return None, Refresh("rebuild", f"{changes.describe()}; {why}", changes)
    records = [info.parts[i] for i in changes.kept] + part_records(changes.new)
    new_info = _updated_info(info, index, stats, records, check)
    new_info.update = _record(refresh, changes, check)
    loaded = LoadedIndex(
        index=index, ids=rows.ids, info=new_info, dataset=ds, part_of=rows.part_of,
        recall=rows.recall,
    )  # fmt: skip
    return loaded, refresh


def _removed(index: faiss.Index, rows: _Rows, gone: np.ndarray, changes: PartChanges) -> _Rows:
    """Take the rows of gone parts out; renumber the kept parts 0, 1, ... in record order."""
    if len(gone):
        new = new_numbers(int(index.ntotal), gone)
        remove_rows(index, gone)
        keep = new >= 0
        recall = rows.recall.relabelled(new) if rows.recall is not None else None
        rows = _Rows(rows.ids[keep], rows.part_of[keep], recall)
    renumber = np.full(len(changes.records), -1, dtype=np.int32)
    renumber[changes.kept] = np.arange(len(changes.kept), dtype=np.int32)
    return _Rows(rows.ids, renumber[rows.part_of], rows.recall)


def _added(
    index: faiss.Index,
    ds: LatentDataset,
    rows: _Rows,
    new: list[PartStat],
    first_part: int,
    info: IndexInfo,
    progress: bool,
    batch_size: int,
) -> Recheck:
    """Add the new parts' rows (fresh recall queries held out for an index measured on
    them), keep ``rows`` in step, and measure recall again."""
    exact = isinstance(faiss.downcast_index(index), faiss.IndexFlat)
    mode = "exact" if exact else "kept" if ivf_of(index) is not None else "fresh"
    total = sum(s.rows for s in new)
    fresh = 0 if mode != "fresh" else min(info.recall_queries, total // FRESH_SHARE)
    hold = np.sort(np.random.default_rng(int(index.ntotal)).choice(total, fresh, replace=False))
    ids, parts, held = [rows.ids], [rows.part_of], []
    if new:
        view = LatentDataset(ds.path, [s.path for s in new], ds.meta)
        held = _stream_in(index, view, rows, new, first_part, info.metric, hold, ids, parts,
                          progress, batch_size)  # fmt: skip
    check = Recheck(dict(info.params), "exact: nothing to measure")
    if mode == "fresh":
        check = _checked(index, rows, held, ids, parts, info)
    rows.ids, rows.part_of = np.concatenate(ids), np.concatenate(parts).astype(np.int32)
    if mode == "kept":
        if _depleted(rows.recall, info):
            rows.recall = drawn_recall_set(
                ds, rows.ids, info.metric, info.recall_queries, TRUTH_DEPTH * info.k, batch_size
            )
        check = recheck_kept(index, rows.recall, info)
    return check


def _stream_in(
    index: faiss.Index, view: LatentDataset, rows: _Rows, new: list[PartStat], first_part: int,
    metric: str, hold: np.ndarray, ids: list, parts: list, progress: bool, batch_size: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """Add the rows of ``view`` (the new parts) but those at positions ``hold``, appending
    their ids and parts and merging them into the recall set; returns the held rows."""
    knn, held = _knn(metric), []
    with progress_bar(progress, sum(s.rows for s in new), "add") as bar:
        for offset, batch_ids, vectors in stream_batches(view, metric, batch_size):
            where = np.arange(offset, offset + len(vectors))
            part = part_of_positions([s.rows for s in new], where) + first_part
            keep = ~np.isin(where, hold)
            first_row = int(index.ntotal)
            index.add(vectors[keep])
            ids.append(batch_ids[keep])
            parts.append(part[keep])
            held.append((vectors[~keep], batch_ids[~keep], part[~keep]))
            if rows.recall is not None:
                rows.recall = rows.recall.with_rows(vectors[keep], first_row, knn)
            bar.update(len(vectors))
    return held


def _depleted(recall: RecallSet | None, info: IndexInfo) -> bool:
    """Whether too few kept recall queries still know their neighbours (rows removed)."""
    if info.recall_queries == 0:
        return False
    if recall is None:
        return True
    wanted = RECALL_KEEP * info.recall_queries
    deep = TRUTH_DEPTH * info.k if info.filter_params else info.k
    return recall.usable(info.k) < wanted or recall.usable(deep) < wanted


def _checked(
    index: faiss.Index,
    rows: _Rows,
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ids: list[np.ndarray],
    parts: list[np.ndarray],
    info: IndexInfo,
) -> Recheck:
    """Recall measured on the held-out fresh rows, which then go in; their ids and parts
    appended to ``ids`` and ``parts`` in the order they were added."""
    vectors = np.concatenate([h[0] for h in held]) if held else np.zeros((0, index.d), "float32")
    first_row = int(index.ntotal)
    check, order = recheck_fresh(index, np.ascontiguousarray(vectors), info, _knn(info.metric))
    sequence = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    ids.append(np.concatenate([h[1] for h in held])[sequence] if held else np.array([]))
    parts.append(np.concatenate([h[2] for h in held])[sequence] if held else np.array([]))
    if rows.recall is not None and len(sequence):
        rows.recall = rows.recall.with_rows(vectors[sequence], first_row, _knn(info.metric))
    return check


def _knn(metric: str):
    def knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn(queries, vectors, k, metric=METRICS[metric])

    return knn


def _updated_info(
    info: IndexInfo,
    index: faiss.Index,
    stats: list[PartStat],
    records: list[dict[str, Any]],
    check: Recheck,
) -> IndexInfo:
    """``index.json`` after the update (files are set when it is saved)."""
    measured = check.recall is not None
    return replace(
        info,
        ntotal=int(index.ntotal),
        fingerprint=fingerprint_of(stats),
        parts=records,
        params={name: _num(v) for name, v in check.params.items()},
        recall=round(check.recall, 4) if measured else info.recall,
        recall_lower=round(check.lower, 4) if measured and check.lower is not None
        else info.recall_lower,
        filter_params={name: _num(v) for name, v in check.filter_params.items()},
        files={},
    )  # fmt: skip


def _record(refresh: Refresh, changes: PartChanges, check: Recheck) -> dict[str, Any]:
    """What ``index.json`` says of this update."""
    return {
        "action": "update", "reason": refresh.reason, "added_rows": changes.added_rows,
        "removed_rows": changes.removed_rows, "recall": check.recall,
        "recall_lower": check.lower, "measured_on": check.how, "retuned": check.retuned,
        "params": dict(check.params),
    }  # fmt: skip


def _num(value: float) -> float:
    return int(value) if float(value).is_integer() else float(value)
