"""What :func:`~embedkit.index.search.neighbors` keeps between calls: opened datasets,
their fingerprints, parsed ``index.json`` files and loaded indexes, each re-validated on
every call with ``os.stat`` only (see docs/search.md, "What a call costs")."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedkit.index.info import INFO_FILE, IndexInfo, index_dir, view_fingerprint
from embedkit.index.loaded import LoadedIndex
from embedkit.index.persist import read_info
from embedkit.location import RemotePath, location_key
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.format import file_stamp, part_stamps

__all__ = [
    "RACY_NS",
    "cached_index",
    "clear_index_cache",
    "dataset_fingerprint",
    "open_dataset",
    "saved_info",
    "settled",
]

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


def settled(stats: tuple) -> bool:
    """Whether every file of ``stats`` (from `file_stamp`) last changed over RACY_NS ago."""
    newest = max((max(s[2], s[3]) for s in stats), default=0)
    return newest < time.time_ns() - RACY_NS


def open_dataset(latents: str | Path | LatentDataset) -> tuple[LatentDataset, tuple | None]:
    """``open_latents``, reused while no part changed (a part stat each, no footer); and
    the parts' stats when this call took them."""
    if isinstance(latents, LatentDataset):
        return latents, None
    folder = latents if isinstance(latents, RemotePath) else os.fspath(latents)
    key = (str(folder), location_key(folder))  # messages name the path as given
    try:
        stats = part_stamps(folder)  # taken before anything is read
    except OSError:
        stats = ()  # no folder, or a part vanished meanwhile: open afresh, cache nothing
    hit = _recall(_opened, key)
    if stats and hit is not None and hit[0] == stats:
        return hit[1], stats
    ds = open_latents(latents)
    if stats and tuple(f.name for f in ds.files) == tuple(os.path.basename(s[0]) for s in stats):
        if settled(stats):
            _remember(_opened, key, (stats, ds))
        return ds, stats
    return ds, None


def dataset_fingerprint(ds: LatentDataset, stats: tuple | None = None) -> tuple[str, tuple | None]:
    """``view_fingerprint(ds)`` (what an index of these rows records), with the dataset's
    fingerprint reused while the parts' stats (``stats``: just taken by :func:`open_dataset`)
    are unchanged; and those stats, None when a part changed too recently to trust them."""
    try:
        if stats is None:
            stats = tuple(file_stamp(f) for f in ds.files)  # taken before the footers are read
    except OSError:
        return view_fingerprint(ds), None  # raises as the uncached call would
    fingerprint = _recall(_fingerprints, stats)
    if fingerprint is None:
        fingerprint = ds.fingerprint()
        if settled(stats):
            _remember(_fingerprints, stats, fingerprint)
        else:
            stats = None  # no index is kept or reused on these stats
    if ds.expression is not None:  # as view_fingerprint words it
        fingerprint = f"{fingerprint}:filtered:{ds.expression}"
    return fingerprint, stats


def saved_info(ds: LatentDataset) -> tuple[IndexInfo | None, tuple | None]:
    """``index.json`` of ``ds`` (reused while its stat is unchanged) and that stat (None
    when it changed too recently to trust it)."""
    try:
        stamp = file_stamp(index_dir(ds) / INFO_FILE)
    except FileNotFoundError:
        return None, None
    if not settled((stamp,)):
        return read_info(ds), None
    info = _recall(_infos, stamp)
    if info is None:
        info = read_info(ds)
        if info is not None:
            _remember(_infos, stamp, info)
    return info, stamp


def cached_index(key: tuple | None, version: Any, make: Callable[[], LoadedIndex]) -> LoadedIndex:
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
