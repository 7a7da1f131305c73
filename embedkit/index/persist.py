"""Saving and reading an index folder: ``index.faiss``, ``ids.parquet``, ``index.json``
(written last: it marks a complete index)."""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["read_index_files", "read_info", "save_index"]


def save_index(loaded: LoadedIndex) -> Path:
    """Write ``loaded`` into ``<latents>/index/``; returns the folder."""
    folder = index_dir(loaded.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / INFO_FILE
    info_path.unlink(missing_ok=True)  # index.json is written last: it marks a complete index
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(to_cpu(loaded.index, loaded.on_gpu), str(tmp))
    atomic_write_table(pa.table({"id": pa.array(loaded.ids, pa.string())}), folder / IDS_FILE)
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


def read_index_files(folder: Path, ds: LatentDataset, mmap: bool) -> tuple[faiss.Index, np.ndarray]:
    """The faiss index and its ids from ``folder``, checked against each other and ``ds``."""
    try:
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
