"""The on-disk format of a latent dataset: layout, metadata, vector columns, errors table.

A latent dataset is a folder::

    latents/
      part-00000-<token>.parquet  id, source, source_size, source_mtime_ns, <carried columns>,
                                  embedding: fixed_size_list<float32>[D]
      part-00001-<token>.parquet  (each written to a hidden temp name, renamed when complete)
      errors/part-*.parquet       source, reason: inputs that could not be embedded
      index/                      FAISS index built from these latents
      .embedkit/                  the writer lock

Every part carries the same schema metadata under the key ``embedkit``: the
backbone info, dim, normalization, dtype, embedkit version and creation time.

The folder may be a URI on object storage (``s3://bucket/latents``): its path is then a
:class:`~embedkit.location.RemotePath`, and files are read through its file system.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from embedkit.errors import InputError
from embedkit.location import RemotePath, arrow_source, locate
from embedkit.plugins.info import BackboneInfo

__all__ = [
    "EMBEDDING",
    "ERRORS_DIR",
    "FILE_STAT_COLUMNS",
    "META_KEY",
    "PART_GLOB",
    "SOURCE_MTIME",
    "SOURCE_SIZE",
    "LatentMeta",
    "error_files",
    "file_stamp",
    "missing_ids_message",
    "parquet_dataset",
    "parquet_metadata",
    "part_files",
    "part_stamps",
    "read_errors",
    "read_meta",
    "read_part",
    "read_schema",
    "vectors_from_column",
]

EMBEDDING = "embedding"
META_KEY = b"embedkit"
PART_GLOB = "part-*.parquet"
ERRORS_DIR = "errors"
#: size and modification time of each source file when it was embedded (null when the
#: rows did not come from files): how a resumed run notices a changed file
SOURCE_SIZE = "source_size"
SOURCE_MTIME = "source_mtime_ns"
FILE_STAT_COLUMNS = (SOURCE_SIZE, SOURCE_MTIME)


@dataclass(frozen=True)
class LatentMeta:
    """Dataset-level metadata stored in every part's schema."""

    backbone: BackboneInfo
    dim: int
    normalized: bool = False
    dtype: str = "float32"
    embedkit_version: str = ""
    created: str = ""

    def to_bytes(self) -> bytes:
        data = {
            "backbone": json.loads(self.backbone.to_json()),
            "dim": self.dim,
            "normalized": self.normalized,
            "dtype": self.dtype,
            "embedkit_version": self.embedkit_version,
            "created": self.created,
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LatentMeta:
        data = json.loads(raw)
        return cls(
            backbone=BackboneInfo.from_json(json.dumps(data["backbone"])),
            dim=int(data["dim"]),
            normalized=bool(data.get("normalized", False)),
            dtype=data.get("dtype", "float32"),
            embedkit_version=data.get("embedkit_version", ""),
            created=data.get("created", ""),
        )


def part_files(path: Path | RemotePath) -> list[Path | RemotePath]:
    return sorted(path.glob(PART_GLOB))


def read_schema(file: Path | RemotePath) -> pa.Schema:
    """The Arrow schema of a Parquet file, local or remote."""
    where, filesystem = arrow_source(file)
    return pq.read_schema(where, filesystem=filesystem)


def parquet_metadata(file: Path | RemotePath) -> pq.FileMetaData:
    """The footer of a Parquet file, local or remote."""
    where, filesystem = arrow_source(file)
    return pq.read_metadata(where, filesystem=filesystem)


def parquet_dataset(files: Sequence[Path | RemotePath]) -> pads.Dataset:
    """The Parquet files ``files`` (all local, or all on one file system) as one dataset."""
    filesystem = files[0].filesystem if files and isinstance(files[0], RemotePath) else None
    return pads.dataset([arrow_source(f)[0] for f in files], format="parquet",
                        filesystem=filesystem)  # fmt: skip


def read_part(file: Path | RemotePath, columns: Sequence[str] | None = None) -> pa.Table:
    """A Parquet file (``columns`` of it), local or remote."""
    where, filesystem = arrow_source(file)
    return pq.read_table(where, columns=columns, filesystem=filesystem)


_is_part = re.compile(fnmatch.translate(PART_GLOB)).match  # what part_files globs for


def file_stamp(path: str | os.PathLike | RemotePath) -> tuple:
    """``(path, size, mtime_ns, ctime_ns, inode, device)`` of a file, from one ``stat``:
    what says a file changed (ctime cannot be set back by a program; an object has no
    ctime or inode: the end of its mtime's second and zeros stand in)."""
    st = path.stat() if isinstance(path, RemotePath) else os.stat(path)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def part_stamps(folder: str | os.PathLike | RemotePath) -> tuple:
    """:func:`file_stamp` of each part in ``folder``, in name order: one ``listdir`` and a
    ``stat`` each, no Parquet footer read (how caches check a dataset is unchanged)."""
    if isinstance(where := locate(folder), RemotePath):
        return tuple(file_stamp(part) for part in part_files(where))
    names = sorted(name for name in os.listdir(folder) if _is_part(name))
    return tuple(file_stamp(os.path.join(folder, name)) for name in names)


def read_meta(file: Path | RemotePath) -> LatentMeta:
    """The embedkit metadata of one part file, or an InputError naming the file."""
    try:
        schema = read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{file} is not a readable Parquet file ({exc}); delete it and re-run"
        ) from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputError(f"{file} has no embedkit metadata; it was not written by embedkit")
    return LatentMeta.from_bytes(raw)


def _chunk_values(chunk: pa.Array, dim: int) -> np.ndarray:
    flat = chunk.flatten()  # respects slicing offsets
    if flat.null_count:
        raise InputError("embedding column holds nulls; the dataset is damaged")
    return flat.to_numpy(zero_copy_only=False).reshape(-1, dim)


def vectors_from_column(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list column -> ``[N, dim]`` numpy: zero-copy for one chunk, else one
    copy of each chunk straight into the result (no intermediate concatenation)."""
    chunks = [
        c for c in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]) if len(c)
    ]
    if len(chunks) == 1:
        return _chunk_values(chunks[0], dim)
    dtype = np.float16 if column.type.value_type == pa.float16() else np.float32
    out = np.empty((sum(len(c) for c in chunks), dim), dtype=dtype)
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = _chunk_values(chunk, dim)
        start += len(chunk)
    return out


def missing_ids_message(absent: Sequence[str], path: Path | RemotePath) -> str:
    """One line naming ids that are not in the latent dataset at ``path``."""
    shown = ", ".join(repr(a) for a in absent[:3]) + (" ..." if len(absent) > 3 else "")
    return (
        f"id {shown} not found in {path} ({len(absent)} missing); "
        "check the ids (see the `id` column) or re-run `embedkit index`"
    )


def error_files(path: Path | RemotePath) -> list[Path | RemotePath]:
    """The parts of the errors table of the latent dataset folder ``path``."""
    return sorted((path / ERRORS_DIR).glob(PART_GLOB))


def read_errors(path: Path | RemotePath) -> pd.DataFrame:
    """The errors table (``source``, ``reason``) of the folder ``path``; works before any
    latent part exists (a run where every input failed)."""
    files = error_files(path)
    if not files:
        return pd.DataFrame({"source": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    return parquet_dataset(files).to_table().to_pandas()
