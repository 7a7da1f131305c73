"""Saving and reading an index folder: the faiss index, its ids (and the part of each
row), its recall queries, and ``index.json`` (written last: it names the files of a
complete index and records each one's size and sha256, which are checked before a file
is read).

A build removes ``index.json`` first and writes ``index.faiss``, ``ids.parquet`` and
``recall.npz``; a crash mid-save leaves no index, never a mismatched one. An incremental
update keeps the old index valid until the new one is complete: it writes new files
(``index-<token>.faiss``, ...) beside the old ones and then replaces ``index.json``, so
the folder always holds one complete index, the old or the new. Files no ``index.json``
names are removed after each save. Saves (and updates) take the dataset's index lock.
An on-disk index also names its ``.ivfdata`` lists file, made in the folder by the build
(:mod:`~embedkit.index.ondisk`), checked like the others and read from the same folder.

An index of a dataset on object storage is saved there the same way (each file appears
whole; ``index.json`` last), under an object lock (:class:`~embedkit.store.lock.ObjectLock`).
It is read from a local copy (:func:`checked_files`): the files ``index.json`` names are
downloaded into :func:`index_cache_dir` (a file already there with the recorded size and
sha256 is reused), checked once, then read (memory-mapped) as a local index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from embedkit.errors import InputError, first_line
from embedkit.files import atomic_path, atomic_write_table
from embedkit.index.gpu import to_cpu
from embedkit.index.info import (
    IDS_FILE,
    INDEX_FILE,
    INFO_FILE,
    RECALL_FILE,
    IndexInfo,
    index_dir,
)
from embedkit.index.loaded import LoadedIndex
from embedkit.index.ondisk import LISTS_SUFFIX, lists_file, read_on_disk
from embedkit.index.recall_set import RecallSet, read_recall_set, write_recall_set
from embedkit.location import RemotePath
from embedkit.store.dataset import LatentDataset
from embedkit.store.lock import STATE_DIR, LockHeld, ObjectLock

__all__ = [
    "CHECKED_FILES",
    "LOCK_SECONDS",
    "IndexFiles",
    "checked_files",
    "file_check",
    "file_of",
    "index_cache_dir",
    "index_lock",
    "read_index_files",
    "read_info",
    "read_recall",
    "save_index",
]

CHECKED_FILES = (INDEX_FILE, IDS_FILE)
#: what each file of an index folder ends with (its role), and the build's file names
SUFFIXES = {"index": ".faiss", "ids": ".parquet", "recall": ".npz", "lists": LISTS_SUFFIX}
BUILD_NAMES = {"index": INDEX_FILE, "ids": IDS_FILE, "recall": RECALL_FILE}
#: how long a save waits for another process's save or update of the same index
LOCK_SECONDS = 600
_CHUNK = 1 << 20
#: where copies of indexes on object storage are kept (else ~/.cache/embedkit)
CACHE_ENV = "EMBEDKIT_CACHE_DIR"
#: a cached copy of an index file no index.json names any more is removed once this old
PRUNE_SECONDS = 600


def file_of(info: IndexInfo, role: str) -> str | None:
    """The name of the ``role`` file (``index``, ``ids``, ``recall``) ``info`` records."""
    return next((name for name in info.files if name.endswith(SUFFIXES[role])), None)


@contextmanager
def index_lock(ds: LatentDataset) -> Iterator[None]:
    """Hold the lock on ``ds``'s index: one save or update at a time (another process
    waits up to ``LOCK_SECONDS``; on object storage an object lock)."""
    if isinstance(ds.path, RemotePath):
        with _object_index_lock(ds):
            yield
        return
    state = Path(ds.path) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock = FileLock(state / "index.lock", is_singleton=False)
    try:
        lock.acquire(timeout=LOCK_SECONDS)
    except Timeout:
        raise InputError(
            f"another process has been saving the index of {ds.path} for {LOCK_SECONDS}s; "
            "wait for it, or delete its index folder and re-run `embedkit index`"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _object_index_lock(ds: LatentDataset) -> Iterator[None]:
    lock = ObjectLock(ds.path, "index.lock")
    try:
        lock.acquire(timeout=LOCK_SECONDS)
    except LockHeld:
        raise InputError(
            f"another process has been saving the index of {ds.path} for {LOCK_SECONDS}s; "
            f"wait for it, or delete {lock.object} and re-run `embedkit index`"
        ) from None
    try:
        yield
    finally:
        lock.release()


def file_check(path: Path | RemotePath) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def save_index(loaded: LoadedIndex, update: bool = False, locked: bool = False) -> Path:
    """Write ``loaded`` into ``<latents>/index/``; returns the folder.

    ``update``: keep the saved index valid until this one is complete (new file names,
    then ``index.json`` replaced); else remove ``index.json`` first. ``locked``: the
    caller holds :func:`index_lock` already."""
    if not locked:
        with index_lock(loaded.dataset):
            return save_index(loaded, update, locked=True)
    folder = index_dir(loaded.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / INFO_FILE
    names = dict(BUILD_NAMES)
    if update:
        token = uuid.uuid4().hex[:8]
        names = {role: f"{role}-{token}{suffix}" for role, suffix in SUFFIXES.items()}
    else:
        info_path.unlink(missing_ok=True)  # written last: it marks a complete index
    with atomic_path(folder / names["index"]) as tmp:
        faiss.write_index(to_cpu(loaded.index, loaded.on_gpu), str(tmp))
    atomic_write_table(_ids_table(loaded), folder / names["ids"])
    written = [names["index"], names["ids"], *_lists_name(loaded, folder)]
    if loaded.recall is not None:
        write_recall_set(loaded.recall, folder / names["recall"])
        written.append(names["recall"])
    loaded.info.files = {name: file_check(folder / name) for name in written}
    with atomic_path(info_path) as tmp:
        tmp.write_text(loaded.info.to_json())
    _remove_unnamed(folder, set(written))
    return folder


def _lists_name(loaded: LoadedIndex, folder: Path) -> list[str]:
    """The on-disk lists file of ``loaded`` (it was made in ``folder``), if it has one."""
    lists = lists_file(loaded.index)
    if lists is None:
        return []
    if Path(lists).parent.resolve() != Path(folder).resolve():
        raise InputError(f"the on-disk lists {lists} are not in {folder}; build the index again")
    return [Path(lists).name]


def _ids_table(loaded: LoadedIndex) -> pa.Table:
    columns = {"id": pa.array(loaded.ids, pa.string())}
    if loaded.part_of is not None:
        columns["part"] = pa.array(loaded.part_of, pa.int32())
    return pa.table(columns)


def _remove_unnamed(folder: Path, named: set[str]) -> None:
    """Delete the index files of earlier saves (never the ones ``index.json`` names)."""
    for path in folder.iterdir():
        ours = any(path.name.endswith(suffix) for suffix in SUFFIXES.values())
        if ours and not path.name.startswith(".") and path.name not in named:
            path.unlink(missing_ok=True)


def read_info(latents: str | Path | LatentDataset) -> IndexInfo | None:
    """The saved ``index.json`` of ``latents``, or None when no index was built."""
    path = index_dir(latents) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return IndexInfo.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"{path} is damaged ({exc}); re-run `embedkit index {path.parent.parent}`"
        ) from None


def _read_faiss(path: Path, mmap: bool) -> faiss.Index:
    """Read an index; ``mmap`` maps inverted lists (IO_FLAG_MMAP) and, where faiss can,
    flat code arrays (IO_FLAG_MMAP_IFC) read-only instead of copying them into RAM."""
    if not mmap:
        return faiss.read_index(str(path))
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    if ifc:
        try:
            return faiss.read_index(str(path), flags | ifc)
        except RuntimeError:
            pass  # e.g. IVF lists cannot take both mappings: map the lists only
    return faiss.read_index(str(path), flags)


def _same_content(path: Path, expected: dict[str, Any]) -> bool:
    """Whether ``path`` has the recorded size, then sha256 (a truncation costs no hashing)."""
    if path.stat().st_size != expected.get("size"):
        return False
    return file_check(path)["sha256"] == expected.get("sha256")


def _verify(path: Path, expected: dict[str, Any] | None, latents: Any, shown: Any = None) -> None:
    """Refuse ``path`` (named ``shown`` in messages) unless its size, then its sha256,
    are those ``index.json`` records."""
    if expected is None:
        raise InputError(
            f"{path.parent / INFO_FILE} has no file digests (written by an older embedkit); "
            f"re-run `embedkit index {latents}`"
        )
    if not _same_content(path, expected):
        raise InputError(
            f"the index file {shown or path} does not match {INFO_FILE} (truncated or "
            f"replaced); re-run `embedkit index {latents}`"
        )


def index_cache_dir(folder: RemotePath) -> Path:
    """Where copies of the index files at ``folder`` are kept:
    ``$EMBEDKIT_CACHE_DIR/indexes/<digest of the URI>`` (default ``~/.cache/embedkit``)."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "embedkit")
    return Path(base) / "indexes" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]


def checked_files(
    folder: Path | RemotePath, info: IndexInfo, names: list[str], latents: Any
) -> Path:
    """The local folder to read the files ``names`` from, each checked once against
    ``info`` (size and sha256): ``folder`` itself when local. For an index on object
    storage, :func:`index_cache_dir`: a copy already there with the recorded size and
    sha256 is used, any other downloaded and checked; copies of files ``info`` no longer
    names are removed when old."""
    if not isinstance(folder, RemotePath):
        for name in names:
            _verify(folder / name, info.files.get(name), latents)
        return folder
    local = index_cache_dir(folder)
    local.mkdir(parents=True, exist_ok=True)
    for name in names:
        expected, copy = info.files.get(name), local / name
        if expected is not None and copy.is_file() and _same_content(copy, expected):
            continue
        if expected is not None:
            with (
                atomic_path(copy) as tmp,
                (folder / name).open("rb") as src,
                open(tmp, "wb") as out,
            ):
                shutil.copyfileobj(src, out, _CHUNK)
        _verify(copy, expected, latents, shown=folder / name)
    old = time.time() - PRUNE_SECONDS
    for path in local.iterdir():
        unnamed = path.name not in info.files and not path.name.startswith(".")
        if unnamed and path.stat().st_mtime < old:
            path.unlink(missing_ok=True)
    return local


class IndexFiles:
    """What :func:`read_index_files` read: the faiss index, each row's id, and each row's
    part (a number in ``IndexInfo.parts``; None when ``ids.parquet`` predates parts)."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, part_of: np.ndarray | None):
        self.index, self.ids, self.part_of = index, ids, part_of


def read_index_files(folder: Path, ds: LatentDataset, mmap: bool, info: IndexInfo) -> IndexFiles:
    """The faiss index, its ids and their parts from ``folder``, each file checked against
    ``info`` (size and sha256) before it is read, then against each other and ``ds``."""
    names = {role: file_of(info, role) for role in ("index", "ids")}
    lists = file_of(info, "lists")  # an on-disk index: read from its folder, read-only
    try:
        checked = [name or INFO_FILE for name in [*names.values(), *([lists] if lists else [])]]
        local = checked_files(folder, info, checked, ds.path)
        path = local / names["index"]
        index = read_on_disk(path) if lists else _read_faiss(path, mmap)
        table = pq.read_table(local / names["ids"])
        ids = table.column("id").to_numpy(zero_copy_only=False)
        parts = table.column("part").to_numpy() if "part" in table.column_names else None
    except (RuntimeError, OSError, pa.ArrowInvalid, KeyError) as exc:
        raise InputError(
            f"cannot read the index in {folder} ({first_line(exc)}); "
            f"re-run `embedkit index {ds.path}`"
        ) from None
    if index.ntotal != len(ids) or index.d != ds.dim:
        raise InputError(
            f"the index in {folder} is damaged ({index.ntotal} rows, {len(ids)} ids); "
            f"re-run `embedkit index {ds.path}`"
        )
    return IndexFiles(index, ids, parts)


def read_recall(folder: Path, info: IndexInfo) -> RecallSet | None:
    """The recall queries ``info`` names, checked like the other files (None: none saved)."""
    name = file_of(info, "recall")
    if name is None:
        return None
    try:
        local = checked_files(folder, info, [name], folder.parent)
        return read_recall_set(local / name)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"cannot read the index in {folder} ({first_line(exc)}); "
            f"re-run `embedkit index {folder.parent}`"
        ) from None
