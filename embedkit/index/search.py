"""Nearest-neighbour search over latent datasets: by id, by vector, or by image.

Results are one pandas DataFrame, one row per (query, neighbour)::

    query | rank | id | score (cosine) or distance (l2) | <carried columns of the neighbour>

* ``score`` is the cosine similarity (higher is closer) when the metric is cosine;
  ``distance`` is the squared L2 distance (lower is closer) when it is l2.
* ``query`` is the query id, the query's row number for ``vectors=``, or the image path.

A call costs what faiss costs, ~0.3 ms and the result table: the opened dataset, its
fingerprint, the parsed ``index.json`` and the loaded index are kept between calls and
re-checked with one ``os.stat`` per part (and one of ``index.json``), never by reading
Parquet footers; an id's vector is read back from an index that stores vectors; the
frame is built from its blocks. See docs/search.md, "What a call costs".
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.index.build import build_index
from embedkit.index.info import INDEX_DIR, INFO_FILE, IndexInfo, index_dir, view_fingerprint
from embedkit.index.load import load_index
from embedkit.index.loaded import LoadedIndex
from embedkit.index.metric import check_metric, prepare_vectors
from embedkit.index.persist import read_info
from embedkit.index.queries import as_list, image_vectors, query_vectors
from embedkit.index.results import results_frame
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.format import file_stamp, missing_ids_message, part_stamps

__all__ = ["RACY_NS", "clear_index_cache", "neighbors"]

# What neighbors() keeps between calls. Each entry is re-validated on every call with
# os.stat only (no Parquet footer, no index.json read): a part or index.json whose size,
# mtime, ctime, inode or device changed, or a part added or removed, is a miss. ctime
# cannot be set back by a program, so this is a finer check than the fingerprint itself.
# A file stamps times from a coarse clock, so one rewritten in place within the tick it
# was stat'ed in looks unchanged: nothing is kept about a file changed in the last
# RACY_NS (git's "racily clean" rule); such calls do the work afresh.
RACY_NS = 100_000_000
_CACHE_SIZE = 4
_cache: OrderedDict[tuple, tuple[Any, LoadedIndex]] = OrderedDict()  # indexes
_opened: OrderedDict[tuple, tuple[tuple, LatentDataset]] = OrderedDict()  # folder -> dataset
_fingerprints: OrderedDict[tuple, str] = OrderedDict()  # part stats -> fingerprint
_infos: OrderedDict[tuple, IndexInfo] = OrderedDict()  # index.json stat -> its content
_lock = threading.Lock()


def clear_index_cache() -> None:
    """Forget indexes (and opened datasets, fingerprints) kept between :func:`neighbors` calls."""
    with _lock:
        for cache in (_cache, _opened, _fingerprints, _infos):
            cache.clear()


def _recall(cache: OrderedDict, key: Any) -> Any:
    with _lock:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
        return hit


def _remember(cache: OrderedDict, key: Any, value: Any, size: int = 4 * _CACHE_SIZE) -> None:
    with _lock:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)


def _settled(stats: tuple) -> bool:
    """Whether every file of ``stats`` (from `file_stamp`) last changed over RACY_NS ago."""
    newest = max((max(s[2], s[3]) for s in stats), default=0)
    return newest < time.time_ns() - RACY_NS


def _open(latents: str | Path | LatentDataset) -> tuple[LatentDataset, tuple | None]:
    """``open_latents``, reused while no part changed (a part stat each, no footer); and
    the parts' stats when this call took them."""
    if isinstance(latents, LatentDataset):
        return latents, None
    folder = os.fspath(latents)
    key = (folder, os.path.abspath(folder))  # messages name the path as given
    try:
        stats = part_stamps(folder)  # taken before anything is read
    except OSError:
        stats = ()  # no folder, or a part vanished meanwhile: open afresh, cache nothing
    hit = _recall(_opened, key)
    if stats and hit is not None and hit[0] == stats:
        return hit[1], stats
    ds = open_latents(latents)
    if stats and tuple(f.name for f in ds.files) == tuple(os.path.basename(s[0]) for s in stats):
        if _settled(stats):
            _remember(_opened, key, (stats, ds))
        return ds, stats
    return ds, None


def _fingerprint(ds: LatentDataset, stats: tuple | None = None) -> tuple[str, tuple | None]:
    """``view_fingerprint(ds)`` (what an index of these rows records), with the dataset's
    fingerprint reused while the parts' stats (``stats``: just taken by :func:`_open`)
    are unchanged; and those stats, None when a part changed too recently to trust them."""
    try:
        if stats is None:
            stats = tuple(file_stamp(f) for f in ds.files)  # taken before the footers are read
    except OSError:
        return view_fingerprint(ds), None  # raises as the uncached call would
    fingerprint = _recall(_fingerprints, stats)
    if fingerprint is None:
        fingerprint = ds.fingerprint()
        if _settled(stats):
            _remember(_fingerprints, stats, fingerprint)
        else:
            stats = None  # no index is kept or reused on these stats
    if ds.expression is not None:  # as view_fingerprint words it
        fingerprint = f"{fingerprint}:filtered:{ds.expression}"
    return fingerprint, stats


def _saved_info(ds: LatentDataset) -> tuple[IndexInfo | None, tuple | None]:
    """``index.json`` of ``ds`` (reused while its stat is unchanged) and that stat (None
    when it changed too recently to trust it)."""
    try:
        stamp = file_stamp(os.path.join(ds.path, INDEX_DIR, INFO_FILE))  # index_dir(ds) / INFO_FILE
    except FileNotFoundError:
        return None, None
    if not _settled((stamp,)):
        return read_info(ds), None
    info = _recall(_infos, stamp)
    if info is None:
        info = read_info(ds)
        if info is not None:
            _remember(_infos, stamp, info)
    return info, stamp


def _cached(key: tuple | None, version: Any, make: Callable[[], LoadedIndex]) -> LoadedIndex:
    """The index cached under ``key`` if it was made from this ``version`` of the data
    (``key`` None: made afresh, not kept)."""
    if key is None:
        return make()
    hit = _recall(_cache, key)
    if hit is not None and hit[0] == version:
        return hit[1]
    loaded = make()
    _remember(_cache, key, (version, loaded), _CACHE_SIZE)
    return loaded


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
        fingerprint = _fingerprint(ds, stats)[0]
    except OSError:  # a part vanished: not current (and the caller's index still searches)
        return index, False
    return index, index.info.fingerprint == fingerprint


def _resolve_index(
    ds: LatentDataset,
    index: LoadedIndex | Literal["exact"] | None,
    metric: str | None,
    rebuild: bool,
    stats: tuple | None = None,
) -> tuple[LoadedIndex, bool]:
    """The given index, the saved one (cached), or an exact in-memory Flat index (cached);
    and whether it holds exactly the rows of ``ds`` as they are now."""
    check_metric(metric)
    if isinstance(index, LoadedIndex):
        return _given(ds, index, metric, stats)
    if index not in (None, "exact"):
        raise InputError(f"index={index!r} is not a LoadedIndex, 'exact' or None")
    fingerprint, stats = _fingerprint(ds, stats)
    root = os.path.abspath(ds.path)
    info, stamp = _saved_info(ds) if index is None and ds.expression is None else (None, None)
    if info is not None:
        if metric is not None and metric != info.metric:
            raise InputError(
                f"the index in {index_dir(ds)} uses metric {info.metric} but metric={metric!r} "
                f"was requested; re-run `embedkit index {ds.path} --metric {metric}` or omit "
                "--metric"
            )
        if rebuild or info.fingerprint == fingerprint:
            key = None if stamp is None else (root, "saved", stamp)
            loaded = _cached(key, fingerprint, lambda: load_index(ds, rebuild=rebuild))
            return loaded, loaded.info.fingerprint == fingerprint
        load_index(ds)  # raises the one-line "stale index" error
    metric = metric or "cosine"
    key = None if stats is None else (root, str(ds.expression), "exact", metric)
    loaded = _cached(  # the stats too: a rewrite that keeps the fingerprint still rebuilds
        key,
        (fingerprint, stats),
        lambda: _exact_index(ds, metric),
    )
    return loaded, loaded.info.fingerprint == fingerprint


def _exact_index(ds: LatentDataset, metric: str) -> LoadedIndex:
    """An in-memory Flat index, built on the CPU and searched on a GPU copy only when a
    search pays for one (a one-off query does not copy the vectors to the GPU)."""
    loaded = build_index(ds, metric=metric, kind="flat", progress=False, save=False, gpu=False)
    loaded.gpu = None
    return loaded


# -- queries ---------------------------------------------------------------------------
# -- the API -------------------------------------------------------------------------------
def neighbors(
    latents: str | Path | LatentDataset,
    ids: str | Sequence[str] | None = None,
    vectors: np.ndarray | Sequence[float] | None = None,
    images: str | Path | Sequence[str | Path] | Any | None = None,
    k: int = 10,
    exclude_self: bool = True,
    metric: str | None = None,
    index: LoadedIndex | Literal["exact"] | None = None,
    nprobe: int | None = None,
    columns: Sequence[str] | None = None,
    rebuild: bool = False,
) -> pd.DataFrame:
    """The k nearest neighbours of latent ids, vectors or images, as a DataFrame.

    Give exactly one of ``ids``, ``vectors`` or ``images``. All queries go to faiss in
    one batched search; neighbour metadata is looked up vectorized.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset` (a filtered view
            searches only its rows, exactly).
        ids: one id or several; their stored vectors are the queries.
        vectors: one ``[D]`` vector or ``[N, D]`` vectors.
        images: image path(s) or PIL image(s), encoded with the backbone that made the latents.
        k: neighbours per query.
        exclude_self: for ``ids`` queries, drop the query row itself from its results.
        metric: ``cosine`` or ``l2``; default: the saved index's metric, else cosine.
            Asking for another metric than the saved index's is an error.
        index: a :class:`LoadedIndex` from :func:`build_index`/:func:`load_index`,
            ``"exact"`` for brute force, or ``None``: the saved index if there is one,
            else exact search (indexes are cached between calls).
        nprobe: override the tuned ``nprobe`` of an IVF index for this call.
        columns: carried columns to return for each neighbour (default: all of them).
        rebuild: rebuild a stale saved index instead of raising.

    Returns:
        Columns ``query, rank, id`` then ``score`` (cosine similarity) for cosine or
        ``distance`` (squared L2) for l2, then the carried columns; ``n_queries * k`` rows
        (fewer only when an approximate index finds fewer than k). ``attrs`` says where
        faiss searched: ``searched_on`` (``"gpu"``/``"cpu"``) and ``search_note`` (why
        not on a GPU that could be used, else None); see docs/search.md, "On a GPU".

    Example:
        >>> neighbors("latents/", ids=["img_001"], k=5)
        >>> neighbors("latents/", images="cat.jpg", k=10, columns=["source", "label"])
    """
    given = [
        name
        for name, v in (("ids", ids), ("vectors", vectors), ("images", images))
        if v is not None
    ]
    if len(given) != 1:
        raise InputError(
            "pass exactly one of ids=, vectors= or images= "
            f"({'none' if not given else ' and '.join(given)} given)"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    ds, stats = _open(latents)
    loaded, current = _resolve_index(ds, index, metric, rebuild, stats)
    wanted = _carried(ds, columns)
    queries, labels, self_rows = _queries(ds, loaded, current, ids, vectors, images)
    if not exclude_self:
        self_rows = None
    found, dist, keep = _search(loaded, queries, k, self_rows, _nprobe_params(loaded, nprobe))
    frame = results_frame(loaded, labels, found, dist, keep, wanted)
    frame.attrs.update(searched_on=loaded.searched_on, search_note=loaded.search_note)
    return frame


def _queries(
    ds: LatentDataset, loaded: LoadedIndex, current: bool, ids: Any, vectors: Any, images: Any
) -> tuple[np.ndarray, Any, np.ndarray | None]:
    """Query vectors as faiss takes them (float32, normalized for cosine), a label per
    query, and (for ids) each query's own faiss row. An id's vector is read back from the
    index when it holds exactly the latents' rows as they are now and keeps vectors
    (Flat, IVF-Flat, HNSW, RFlat); else from the Parquet parts with one filtered scan."""
    metric = loaded.metric
    if ids is not None:
        query_ids = [str(i) for i in as_list(ids)]
        if not query_ids:
            raise InputError("ids= is empty; pass at least one id")
        self_rows = loaded.rows_of(query_ids)
        if (self_rows < 0).any():
            absent = [query_ids[i] for i in np.flatnonzero(self_rows < 0)]
            raise InputError(missing_ids_message(absent, ds.path))
        stored = loaded.stored_vectors(self_rows) if current else None
        if stored is None:  # prepared as the index's own rows were
            stored = prepare_vectors(ds.vectors_of(query_ids), metric, "query vectors")
        return stored, query_ids, self_rows
    if vectors is not None:
        raw = query_vectors(vectors, ds.dim)  # checked finite
        return prepare_vectors(raw, metric, "query vectors", check=False), np.arange(len(raw)), None
    items = as_list(images)
    if not items:
        raise InputError("images= is empty; pass at least one image path")
    raw, labels = image_vectors(ds, items)
    queries = prepare_vectors(raw, metric, "query vectors")
    if ds.normalized and metric == "l2":
        import faiss

        faiss.normalize_L2(queries)  # image queries must look like the stored latents
    return queries, labels, None


def _search(
    loaded: LoadedIndex,
    queries: np.ndarray,
    k: int,
    self_rows: np.ndarray | None,
    params: dict[str, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, distances, valid)`` of the k nearest, each query's own row left out."""
    extra = 1 if self_rows is not None else 0
    dist, found = loaded.search(queries, min(k + extra, loaded.ntotal), params)
    if self_rows is None:
        found, dist = found[:, :k], dist[:, :k]
        return found, dist, found >= 0
    if (found[:, 0] == self_rows).all():  # the usual case: each query row comes first
        found, dist = found[:, 1:], dist[:, 1:]
        return found, dist, found >= 0
    drop = (found == self_rows[:, None]) | (found < 0)
    order = np.argsort(drop, axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)[:, :k]
    dist = np.take_along_axis(dist, order, axis=1)[:, :k]
    return found, dist, ~np.take_along_axis(drop, order, axis=1)[:, :k]


def _carried(ds: LatentDataset, columns: Sequence[str] | None) -> list[str]:
    available = [c for c in ds.columns if c != "id"]
    if columns is None:
        return available
    columns = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in columns if c not in available and c != "id"]
    if unknown:
        raise InputError(
            f"no column {unknown[0]!r} in {ds.path}; columns: {', '.join(available) or 'none'}"
        )
    return [c for c in columns if c != "id"]


def _nprobe_params(loaded: LoadedIndex, nprobe: int | None) -> dict[str, float] | None:
    if nprobe is None:
        return None
    if "nprobe" not in loaded.info.params and loaded.info.kind not in ("ivf", "ivfpq"):
        raise InputError(
            f"nprobe applies to IVF indexes; this index is {loaded.info.kind} "
            f"({loaded.info.factory})"
        )
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise InputError(f"nprobe must be an integer >= 1, got {nprobe!r}")
    return {"nprobe": int(nprobe)}
