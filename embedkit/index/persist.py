"""Saving and reading an index folder: ``index.faiss``, ``ids.parquet``, ``index.json``
(written last: it marks a complete index, and records each file's size and sha256, which
are checked before a file is read)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.errors import InputError, first_line
from embedkit.files import atomic_path, atomic_write_table
from embedkit.index.gpu import to_cpu
from embedkit.index.info import IDS_FILE, INDEX_FILE, INFO_FILE, IndexInfo, index_dir
from embedkit.index.loaded import LoadedIndex
from embedkit.store.dataset import LatentDataset

__all__ = ["CHECKED_FILES", "file_check", "read_index_files", "read_info", "save_index"]

CHECKED_FILES = (INDEX_FILE, IDS_FILE)
_CHUNK = 1 << 20


def file_check(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def save_index(loaded: LoadedIndex) -> Path:
    """Write ``loaded`` into ``<latents>/index/``; returns the folder."""
    folder = index_dir(loaded.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / INFO_FILE
    info_path.unlink(missing_ok=True)  # index.json is written last: it marks a complete index
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(to_cpu(loaded.index, loaded.on_gpu), str(tmp))
    atomic_write_table(pa.table({"id": pa.array(loaded.ids, pa.string())}), folder / IDS_FILE)
    loaded.info.files = {name: file_check(folder / name) for name in CHECKED_FILES}
    with atomic_path(info_path) as tmp:
        tmp.write_text(loaded.info.to_json())
    return folder


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


def _verify(path: Path, expected: dict[str, Any] | None, ds: LatentDataset) -> None:
    """Refuse ``path`` unless its size, then its sha256, are those ``index.json`` records."""
    if expected is None:
        raise InputError(
            f"{path.parent / INFO_FILE} has no file digests (written by an older embedkit); "
            f"re-run `embedkit index {ds.path}`"
        )
    size_ok = path.stat().st_size == expected.get("size")  # cheap: a truncation costs no hashing
    if not size_ok or file_check(path)["sha256"] != expected.get("sha256"):
        raise InputError(
            f"the index file {path} does not match {INFO_FILE} (truncated or replaced); "
            f"re-run `embedkit index {ds.path}`"
        )


def read_index_files(
    folder: Path, ds: LatentDataset, mmap: bool, info: IndexInfo
) -> tuple[faiss.Index, np.ndarray]:
    """The faiss index and its ids from ``folder``, each file checked against ``info``
    (size and sha256) before it is read, then against each other and ``ds``."""
    try:
        for name in CHECKED_FILES:
            _verify(folder / name, info.files.get(name), ds)
        index = _read_faiss(folder / INDEX_FILE, mmap)
        ids = pq.read_table(folder / IDS_FILE).column("id").to_numpy(zero_copy_only=False)
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
    return index, ids
