"""Reading a latent dataset's vectors into numpy at disk speed: the plain pages of each
part copied straight from the file (see ``pages.py``), any other layout decoded by Arrow,
all rows or only some, in storage order (parts by name, then row groups).

The parts are first described by :func:`part_stats` (name, size, rows, modification
time, inode: what :func:`fingerprint_of` digests); a read then checks that each file it
opens is still the one described, and raises :class:`PartsChanged` if not, so what was
read always matches its fingerprint (which the vector cache is named by).

A part on object storage has no inode (0 stands in) and a modification time of the
store's precision (seconds on S3); its vectors are decoded by Arrow, which fetches a
column chunk in one request, rather than page by page.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.errors import InputError
from embedkit.location import RemotePath, RemoteStat
from embedkit.store.format import EMBEDDING, parquet_metadata, vectors_from_column
from embedkit.store.pages import Extents, NotPlain, column_extents

__all__ = [
    "PartStat",
    "PartsChanged",
    "VectorRead",
    "fingerprint_of",
    "part_stats",
    "read_columns",
    "read_vectors",
]

#: a sparse selection is read row run by row run; a block of this many bytes with more
#: runs than RUNS_PER_BLOCK is read whole and the rows taken from it
BLOCK_BYTES = 16 << 20
RUNS_PER_BLOCK = 256


class PartsChanged(Exception):
    """A part was replaced, rewritten or removed between describing and reading it."""


@dataclass(frozen=True)
class PartStat:
    """One part as :meth:`LatentDataset.fingerprint` sees it."""

    path: Path | RemotePath
    size: int
    rows: int
    mtime_ns: int
    inode: int

    def same_file(self, st: os.stat_result | RemoteStat) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.inode)


def part_stats(files: Sequence[Path | RemotePath]) -> list[PartStat]:
    """A stat and the Parquet footer of each part (never the data)."""
    out = []
    for f in files:
        try:
            st = f.stat()
            rows = parquet_metadata(f).num_rows
        except FileNotFoundError:
            raise InputError(f"{f} is gone; open the latent dataset again") from None
        out.append(PartStat(f, st.st_size, rows, st.st_mtime_ns, st.st_ino))
    return out


def fingerprint_of(stats: Sequence[PartStat]) -> str:
    """16 hex digits that change when a part is added, removed, rewritten or touched."""
    digest = hashlib.sha256()
    for s in stats:
        digest.update(f"{s.path.name}:{s.size}:{s.rows}:{s.mtime_ns}:{s.inode};".encode())
    return digest.hexdigest()[:16]


class _Part:
    """An open part (checked against its :class:`PartStat` by :func:`_open`); ``plain``:
    its vectors may be copied from their pages (a local file)."""

    def __init__(self, stat: PartStat, handle: BinaryIO, plain: bool = True):
        self.path = stat.path
        self.handle = handle
        self.parquet = pq.ParquetFile(handle)
        if self.parquet.metadata.num_rows != stat.rows:
            raise PartsChanged(stat.path)
        leaves = [
            i
            for i in range(self.parquet.metadata.num_columns)
            if self.parquet.schema.column(i).path.startswith(f"{EMBEDDING}.")
        ]
        self.column = leaves[0] if len(leaves) == 1 and plain else None

    def extents(self, group: int, dim: int, dtype: np.dtype) -> Extents | None:
        """Where the vectors of row group ``group`` lie, or None to decode them with Arrow."""
        if self.column is None:
            return None
        schema = self.parquet.schema.column(self.column)
        physical = "FLOAT" if dtype == np.float32 else "FIXED_LEN_BYTE_ARRAY"
        if schema.physical_type != physical or dtype.itemsize != (schema.length or 4):
            return None
        meta = self.parquet.metadata.row_group(group)
        levels = (schema.max_repetition_level, schema.max_definition_level)
        try:
            return column_extents(
                self.handle, meta.column(self.column), levels, dtype.itemsize, meta.num_rows * dim
            )
        except (NotPlain, IndexError, ValueError):
            return None

    def read_group(self, group: int, local: np.ndarray | None, out: np.ndarray) -> bool:
        """Fill ``out`` with the vectors of row group ``group`` (or its rows ``local``);
        True when Arrow had to decode them."""
        dim = out.shape[1]
        count = self.parquet.metadata.row_group(group).num_rows
        extents = self.extents(group, dim, out.dtype)
        if extents is None:
            table = self.parquet.read_row_group(group, columns=[EMBEDDING])
            vectors = vectors_from_column(table.column(EMBEDDING), dim)
            out[:] = vectors if local is None else vectors[local]
            return True
        try:
            if local is None:
                extents.read(self.handle, 0, count * dim, memoryview(out).cast("B"))
            else:
                _fill_selected(self.handle, extents, local, out, count)
        except NotPlain:  # the file ends before its own pages do: it changed under us
            raise PartsChanged(self.path) from None
        return False


def _open(stats: Sequence[PartStat]) -> Iterator[tuple[_Part, int]]:
    """Each part, opened and checked, with its first row's index in the dataset."""
    first = 0
    for stat in stats:
        remote = isinstance(stat.path, RemotePath)
        try:
            if remote and not stat.same_file(stat.path.stat()):
                raise PartsChanged(stat.path)
            handle = stat.path.open("rb") if remote else open(stat.path, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise PartsChanged(stat.path) from None
        with handle:
            if not remote and not stat.same_file(os.fstat(handle.fileno())):
                raise PartsChanged(stat.path)
            yield _Part(stat, handle, plain=not remote), first
        first += stat.rows


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index (into ``rows``) where each run of consecutive rows starts, and where it ends."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])


def _fill_selected(
    handle: BinaryIO, extents: Extents, rows: np.ndarray, out: np.ndarray, group_rows: int
) -> None:
    """``out[i]`` = vector ``rows[i]`` of the row group (sorted, unique rows)."""
    dim = out.shape[1]
    block = max(1, BLOCK_BYTES // (dim * extents.itemsize))
    for b0 in range(int(rows[0]) // block * block, int(rows[-1]) + 1, block):
        i0, i1 = np.searchsorted(rows, [b0, b0 + block])
        if i0 == i1:
            continue
        starts, ends = _runs(rows[i0:i1])
        if len(starts) > RUNS_PER_BLOCK:  # dense: read the block, take its rows
            scratch = np.empty((min(block, group_rows - b0), dim), out.dtype)
            view = memoryview(scratch).cast("B")
            extents.read(handle, b0 * dim, (b0 + len(scratch)) * dim, view)
            out[i0:i1] = scratch[rows[i0:i1] - b0]
            continue
        for s, e in zip(starts + i0, ends + i0, strict=True):
            first = int(rows[s])
            view = memoryview(out[s:e]).cast("B")
            extents.read(handle, first * dim, (first + e - s) * dim, view)


@dataclass
class VectorRead:
    """The vectors read, and whether Arrow had to decode some of them (a layout that
    cannot be read at disk speed, which the vector cache is for)."""

    vectors: np.ndarray
    decoded: bool


def read_vectors(
    stats: Sequence[PartStat], dim: int, dtype: str, rows: np.ndarray | None = None
) -> VectorRead:
    """The vectors of the parts ``stats`` describe (``rows``: sorted, unique row indexes
    of the whole dataset, or all) as ``[N, dim]``; :class:`PartsChanged` if a part is not
    the file described."""
    kind = np.dtype(dtype).newbyteorder("<")
    total = sum(s.rows for s in stats)
    out = np.empty((total if rows is None else len(rows), dim), kind)
    decoded = False
    for part, first in _open(stats):
        for group in range(part.parquet.metadata.num_row_groups):
            count = part.parquet.metadata.row_group(group).num_rows
            lo, hi, local = first, first + count, None
            if rows is not None:
                lo, hi = np.searchsorted(rows, [first, first + count])
                local = rows[lo:hi] - first
            if hi > lo:
                decoded |= part.read_group(group, local, out[lo:hi])
            first += count
    return VectorRead(out.astype(np.dtype(dtype), copy=False), decoded)


def read_columns(stats: Sequence[PartStat], columns: Sequence[str]) -> pa.Table:
    """``columns`` of every part, in storage order, from the files ``stats`` describe,
    with ``__row``: each row's index in the dataset."""
    tables = []
    for part, first in _open(stats):
        present = set(part.parquet.schema_arrow.names)
        table = part.parquet.read(columns=[c for c in columns if c in present])
        rows = pa.array(np.arange(first, first + part.parquet.metadata.num_rows, dtype=np.int64))
        tables.append(table.append_column("__row", rows))
    # a part without a column (a hand-written one) gets nulls there, as in a dataset scan
    return pa.concat_tables(tables, promote_options="permissive")
