"""Which index answers a :func:`~embedkit.index.search.neighbors` call, and how.

* The whole dataset: the given index, the saved one (cached; a stale one is refused,
  updated in place with ``update=True`` or rebuilt with ``rebuild=True``), or an exact
  in-memory ``Flat`` index (cached) when there is none or ``index="exact"``.
* A filtered view: the whole dataset's index (given, or saved and current, or brought up
  to date with ``update=True``) searched with a selector over the view's rows, or an exact
  scan of the view, as :func:`~embedkit.index.filtered.plan_subset` chooses by its size;
  an exact scan too without a usable index (none saved, a stale one, ``index="exact"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from embedkit.errors import InputError
from embedkit.index.build import build_index
from embedkit.index.filter_tune import measured_plan
from embedkit.index.filtered import Subset, method_for, subset_of
from embedkit.index.info import IndexInfo, index_dir
from embedkit.index.load import load_index
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import check_metric
from embedkit.index.persist import file_of, read_recall
from embedkit.index.recall_set import RecallSet
from embedkit.index.search_cache import cached_index, dataset_fingerprint, saved_info
from embedkit.index.update import update_index
from embedkit.location import location_key
from embedkit.store.dataset import LatentDataset

__all__ = ["Resolved", "resolve_index", "whole_dataset"]


@dataclass
class Resolved:
    """The index a call searches; whether it holds the rows as they are now; ``method``:
    ``"index"``, ``"exact"``, ``"index+selector"`` or ``"exact subset scan"``; for a
    selector search the rows and the search parameters; and why (filtered views)."""

    loaded: LoadedIndex
    current: bool
    method: str
    subset: Subset | None = None
    params: dict[str, float] | None = None
    reason: str | None = None


def whole_dataset(ds: LatentDataset) -> LatentDataset:
    """``ds`` without its filter (the same parts)."""
    if ds.expression is None:
        return ds
    return LatentDataset(ds.path, ds.files, ds.meta, None, ds.cache)


def _given(
    ds: LatentDataset, index: LoadedIndex, metric: str | None, stats: tuple | None
) -> tuple[LoadedIndex, bool]:
    """A caller's index, checked; and whether it was built from ``ds`` as it is now."""
    if metric is not None and metric != index.metric:
        raise InputError(
            f"the given index uses metric {index.metric} but metric={metric!r} was "
            f"requested; build one with metric={metric!r} or omit metric"
        )
    if index.info.dim != ds.dim:
        raise InputError(f"the given index has dim {index.info.dim}, the latents {ds.dim}")
    try:
        fingerprint = dataset_fingerprint(ds, stats)[0]
    except OSError:  # a part vanished: not current (and the caller's index still searches)
        return index, False
    return index, index.info.fingerprint == fingerprint


def _check_saved_metric(ds: LatentDataset, info: IndexInfo, metric: str | None) -> None:
    if metric is not None and metric != info.metric:
        raise InputError(
            f"the index in {index_dir(ds)} uses metric {info.metric} but metric={metric!r} "
            f"was requested; re-run `embedkit index {ds.path} --metric {metric}` or omit "
            "--metric"
        )


def _saved(
    ds: LatentDataset, fingerprint: str, rebuild: bool, update: bool
) -> tuple[LoadedIndex | None, str | None]:
    """The saved index of the whole dataset ``ds`` as it is now (cached; updated or rebuilt
    when asked), or None and why: none saved, or stale (the one-line refusal)."""
    info, stamp = saved_info(ds)
    if info is None:
        return None, "no saved index"
    root = location_key(ds.path)
    if info.fingerprint != fingerprint and update:
        loaded = update_index(ds)
        info, stamp = saved_info(ds)
        key = None if stamp is None else (root, "saved", stamp)
        return cached_index(key, fingerprint, lambda: loaded), None
    if info.fingerprint != fingerprint and not rebuild:
        try:
            load_index(ds)
        except InputError as exc:  # the stale-index refusal, naming the cheapest fix
            return None, str(exc)
    key = None if stamp is None else (root, "saved", stamp)
    return cached_index(key, fingerprint, lambda: load_index(ds, rebuild=rebuild)), None


def _exact(ds: LatentDataset, metric: str, fingerprint: str, stats: tuple | None) -> LoadedIndex:
    """An in-memory Flat index of ``ds`` (a view: its rows), cached, built on the CPU and
    searched on a GPU copy only when a search pays for one."""

    def make() -> LoadedIndex:
        loaded = build_index(ds, metric=metric, kind="flat", progress=False, save=False, gpu=False)
        loaded.gpu = None
        return loaded

    key = None if stats is None else (location_key(ds.path), str(ds.expression), "exact", metric)
    # the stats too: a rewrite that keeps the fingerprint still rebuilds
    return cached_index(key, (fingerprint, stats), make)


def _recall_of(loaded: LoadedIndex) -> RecallSet | None:
    """The index's recall queries: those it was built or updated with, else its saved
    ones (read once, then kept with it)."""
    if loaded.recall is None and loaded.path is not None and file_of(loaded.info, "recall"):
        loaded.recall = read_recall(loaded.path, loaded.info)
    return loaded.recall


def resolve_index(
    ds: LatentDataset,
    index: LoadedIndex | Literal["exact"] | None,
    metric: str | None,
    rebuild: bool = False,
    update: bool = False,
    stats: tuple | None = None,
    queries: int = 1,
) -> Resolved:
    """The index a search of ``ds`` with ``queries`` queries uses, and how (see the module
    docstring)."""
    check_metric(metric)
    if index not in (None, "exact") and not isinstance(index, LoadedIndex):
        raise InputError(f"index={index!r} is not a LoadedIndex, 'exact' or None")
    if ds.expression is not None:
        return _filtered(ds, index, metric, (rebuild, update), stats, queries)
    if isinstance(index, LoadedIndex):
        return Resolved(*_given(ds, index, metric, stats), "index")
    fingerprint, stats = dataset_fingerprint(ds, stats)
    if index is None:
        info = saved_info(ds)[0]
        if info is not None:
            _check_saved_metric(ds, info, metric)
            loaded, refusal = _saved(ds, fingerprint, rebuild, update)
            if loaded is None:
                raise InputError(refusal)
            return Resolved(loaded, loaded.info.fingerprint == fingerprint, "index")
    loaded = _exact(ds, metric or "cosine", fingerprint, stats)
    return Resolved(loaded, loaded.info.fingerprint == fingerprint, "exact")


def _filtered(
    view: LatentDataset,
    index: LoadedIndex | Literal["exact"] | None,
    metric: str | None,
    refresh: tuple[bool, bool],
    stats: tuple | None,
    queries: int,
) -> Resolved:
    """A filtered view: the whole dataset's index with a selector, or an exact scan
    (``refresh``: rebuild, update a stale saved index)."""
    rebuild, update = refresh
    whole = whole_dataset(view)
    fingerprint, stats = dataset_fingerprint(whole, stats)
    loaded, why = None, "index='exact'"
    if isinstance(index, LoadedIndex):
        loaded, current = _given(whole, index, metric, stats)
        if index.info.fingerprint == dataset_fingerprint(view, stats)[0]:
            return Resolved(index, True, "index", reason="an index of the view itself")
        if not current:
            raise InputError(
                f"the given index was not built from {whole.path} as it is now; pass an "
                "index of the whole dataset (or of this view), or index=None"
            )
    elif index is None:
        info = saved_info(whole)[0]
        if info is not None and metric not in (None, info.metric):
            why = f"metric {metric} asked for; the saved index uses {info.metric}"
        else:
            metric = info.metric if info is not None else metric
            loaded, why = _saved(whole, fingerprint, rebuild, update)
    if loaded is not None:
        subset = subset_of(loaded, view)
        if subset.count == 0:
            raise InputError(f"the filter {view.expression} keeps no rows of {view.path}")
        plan = method_for(measured_plan(loaded, subset, _recall_of(loaded)), subset, queries)
        if plan.method == "index+selector":
            return Resolved(loaded, True, plan.method, subset, plan.params, plan.reason)
        metric, why = loaded.metric, plan.reason
    view_fingerprint = dataset_fingerprint(view, stats)[0]
    exact = _exact(view, metric or "cosine", view_fingerprint, stats)
    current = exact.info.fingerprint == view_fingerprint
    return Resolved(exact, current, "exact subset scan", reason=why)
