"""Writing latent datasets: one writer at a time (a lock), parts that appear only when
complete and durable, errors recorded as they happen."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.errors import InputError
from embedkit.files import atomic_write_table, replace_durably
from embedkit.plugins.info import BackboneInfo
from embedkit.store.format import (
    EMBEDDING,
    ERRORS_DIR,
    META_KEY,
    SOURCE_MTIME,
    SOURCE_SIZE,
    LatentMeta,
    part_files,
    read_meta,
)
from embedkit.store.lock import DatasetLock
from embedkit.store.parts import next_part_name, parquet_options
from embedkit.version import __version__

__all__ = ["LatentWriter", "write_latents"]

DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
#: recorded errors are written at the latest after this many or this many seconds
ERRORS_PER_FLUSH = 256
SECONDS_PER_ERROR_FLUSH = 5.0


def _stat_columns(
    stats: tuple[Sequence[int], Sequence[int]] | None, rows: int
) -> dict[str, pa.Array]:
    """The source file size and mtime columns (nulls where rows have no file)."""
    if stats is None:
        return {name: pa.nulls(rows, pa.int64()) for name in (SOURCE_SIZE, SOURCE_MTIME)}
    sizes, mtimes = (pa.array(np.asarray(v, dtype=np.int64), pa.int64()) for v in stats)
    if len(sizes) != rows or len(mtimes) != rows:
        raise InputError(f"file stats for {len(sizes)} rows, {rows} ids; pass one per id")
    return {SOURCE_SIZE: sizes, SOURCE_MTIME: mtimes}


def _column_array(name: str, values: Any, rows: int) -> pa.Array:
    """One carried column as Arrow, keeping None/NaN as nulls and ints as ints."""
    try:
        if isinstance(values, (pd.Series, pd.Index)):
            array = pa.Array.from_pandas(values)
        elif isinstance(values, np.ndarray):
            array = pa.array(values)
        else:
            array = pa.array(list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputError(f"column {name!r} cannot be stored ({exc})") from exc
    if len(array) != rows:
        raise InputError(f"column {name!r} has {len(array)} values for {rows} ids")
    return array


class LatentWriter:
    """Streams batches of latents into ``part-NNNNN.parquet`` files.

    Rows are buffered into row groups of ``row_group_rows`` (default: ~32 MiB of
    vectors); a part is closed, fsynced and renamed into place after ``rows_per_part``
    rows or ``seconds_per_part`` seconds, so an interrupted run loses at most one part's
    worth of work. The writer holds the dataset's lock from creation to :meth:`close`:
    a second writer is refused. Appending latents from another latent space (another
    backbone, other weights, another precision) is refused too.
    """

    def __init__(
        self,
        path: str | Path,
        backbone: BackboneInfo,
        normalized: bool = False,
        dtype: str = "float32",
        rows_per_part: int = 100_000,
        seconds_per_part: float = 60.0,
        row_group_rows: int | None = None,
    ):
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; use float32 or float16")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = DatasetLock(self.path).acquire()
        for stale in self.path.glob(".part-*.tmp"):
            stale.unlink()  # left by an interrupted run: never a complete part
        self.meta = LatentMeta(
            backbone=backbone,
            dim=backbone.dim,
            normalized=normalized,
            dtype=dtype,
            embedkit_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.schema: pa.Schema | None = None
        self._check_existing()
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        # ~32 MiB of vectors per row group: big enough for fast scans, small enough that
        # memory stays flat for wide embeddings
        itemsize = 2 if dtype == "float16" else 4
        self.row_group_rows = row_group_rows or max(
            256, min(16_384, (32 << 20) // (backbone.dim * itemsize))
        )
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._part_rows = 0
        self._part_started = 0.0
        self.rows_written = 0
        self.errors_written = 0
        self._errors: list[tuple[str, str]] = []
        self._errors_flushed = time.monotonic()

    def _check_existing(self) -> None:
        files = part_files(self.path)
        if not files:
            return
        existing = read_meta(files[0])
        differences = existing.backbone.differences(self.meta.backbone)
        if differences:
            raise InputError(
                f"{self.path} holds latents of {existing.backbone.name} "
                f"{existing.backbone.space_config()}, another latent space than "
                f"{self.meta.backbone.name} {self.meta.backbone.space_config()} "
                f"({'; '.join(differences)}); refusing to add them: write to a new folder"
            )
        if (existing.normalized, existing.dtype) != (self.meta.normalized, self.meta.dtype):
            raise InputError(
                f"{self.path} holds normalized={existing.normalized} dtype={existing.dtype} "
                f"latents; re-run with the same --normalize/--dtype or use a new folder"
            )
        self.meta = LatentMeta(**{**self.meta.__dict__, "created": existing.created})
        self.schema = pq.read_schema(files[0])

    def _vector_type(self) -> pa.DataType:
        # required (non-null) vectors and values: Parquet then stores no definition levels,
        # which makes reading them ~1.8x faster
        value = pa.field("element", DTYPES[self.meta.dtype], nullable=False)
        return pa.list_(value, self.meta.dim)

    # -- rows ---------------------------------------------------------------
    def _table(
        self,
        ids: Sequence[str],
        sources: Sequence[str],
        vectors: np.ndarray,
        columns: pd.DataFrame | dict[str, Sequence[Any]] | None,
        stats: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> pa.Table:
        vectors = np.ascontiguousarray(vectors, dtype=np.dtype(self.meta.dtype))
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.meta.dim):
            raise InputError(
                f"vectors have shape {vectors.shape}; expected [N, {self.meta.dim}] "
                f"with N = {len(ids)} ids"
            )
        if len(sources) != len(ids):
            raise InputError(f"{len(sources)} sources for {len(ids)} ids; pass one per id")
        flat = pa.array(vectors.reshape(-1), type=DTYPES[self.meta.dtype])
        data: dict[str, Any] = {
            "id": pa.array(list(ids), pa.string()),
            "source": pa.array(list(sources), pa.string()),
            **_stat_columns(stats, len(ids)),
        }
        items = columns.items() if columns is not None else []
        for name, values in items:
            if name in data or name == EMBEDDING:
                continue
            data[name] = _column_array(name, values, len(ids))
        data[EMBEDDING] = pa.FixedSizeListArray.from_arrays(flat, type=self._vector_type())
        table = pa.table(data)
        if self.schema is None:
            schema = table.schema
            vectors = schema.get_field_index(EMBEDDING)
            schema = schema.set(vectors, pa.field(EMBEDDING, self._vector_type(), nullable=False))
            self.schema = schema.with_metadata({META_KEY: self.meta.to_bytes()})
        try:
            return table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise InputError(
                f"columns {table.schema.names} do not match the dataset's "
                f"{self.schema.names} in {self.path} ({exc})"
            ) from exc

    def write(
        self,
        ids: Sequence[str],
        sources: Sequence[str],
        vectors: np.ndarray,
        columns: pd.DataFrame | dict[str, Sequence[Any]] | None = None,
        stats: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> None:
        """Buffer one batch of rows; flushes row groups and parts as they fill.

        ``stats`` is ``(sizes, mtimes_ns)`` of the source files, when rows come from files.
        """
        if len(ids) == 0:
            return
        self.write_table(self._table(ids, sources, vectors, columns, stats))

    def write_table(self, table: pa.Table) -> None:
        """Buffer rows already in this dataset's schema (as :meth:`write` makes them)."""
        if self._writer is None and not self._buffered:
            self._part_started = time.monotonic()  # the part's clock starts at its first row
        self._buffer.append(table)
        self._buffered += table.num_rows
        # Buffered rows count too: otherwise a part could not close before a row group filled.
        part_due = (
            self._part_rows + self._buffered >= self.rows_per_part
            or time.monotonic() - self._part_started >= self.seconds_per_part
        )
        if part_due or self._buffered >= self.row_group_rows:
            self._flush_row_group()
        if part_due:
            self._close_part()

    def _flush_row_group(self) -> None:
        self.flush_errors()
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            self._final = self.path / next_part_name(self.path)
            self._tmp = self.path / f".{self._final.stem}.tmp"
            self._writer = pq.ParquetWriter(self._tmp, self.schema, **parquet_options(self.schema))
            self._part_rows = 0
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._part_rows += table.num_rows
        self.rows_written += table.num_rows

    def _close_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        replace_durably(self._tmp, self._final)
        self._writer = self._tmp = self._final = None
        self._part_rows = 0

    def flush(self) -> None:
        """Make every row and error recorded so far durable, as complete parts."""
        self._flush_row_group()
        self._close_part()
        self.flush_errors()

    def write_errors(self, sources: Sequence[str], reasons: Sequence[str]) -> None:
        """Record inputs that could not be embedded. They are written (atomically, as an
        errors part) within seconds or a few hundred errors, and whenever rows are."""
        self._errors += zip(map(str, sources), map(str, reasons), strict=True)
        self.errors_written += len(sources)
        overdue = time.monotonic() - self._errors_flushed >= SECONDS_PER_ERROR_FLUSH
        if len(self._errors) >= ERRORS_PER_FLUSH or (self._errors and overdue):
            self.flush_errors()

    def flush_errors(self) -> None:
        """Write the recorded errors not written yet."""
        self._errors_flushed = time.monotonic()
        if not self._errors:
            return
        directory = self.path / ERRORS_DIR
        directory.mkdir(exist_ok=True)
        sources, reasons = zip(*self._errors, strict=True)
        table = pa.table(
            {
                "source": pa.array(list(sources), pa.string()),
                "reason": pa.array(list(reasons), pa.string()),
            }
        )
        atomic_write_table(table, directory / next_part_name(directory))
        self._errors = []

    def close(self) -> None:
        """Flush everything and release the dataset's lock."""
        try:
            self.flush()
        finally:
            self._lock.release()

    def __enter__(self) -> LatentWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep the rows that finished; a re-run resumes after them
            self.close()
        except Exception:  # the writer itself failed (disk full, ...): drop the open part
            if self._writer is not None:
                self._writer.close()
                self._tmp.unlink(missing_ok=True)
            self._lock.release()


def write_latents(
    path: str | Path,
    ids: Sequence[str],
    vectors: np.ndarray,
    backbone: BackboneInfo,
    columns: pd.DataFrame | dict | None = None,
    sources: Sequence[str] | None = None,
    normalized: bool = False,
    dtype: str = "float32",
) -> Path:
    """Write (or append) whole arrays as a latent dataset; returns the folder.

    Example:
        >>> write_latents("lat/", ["a", "b"], np.eye(2, 8, dtype="float32"),
        ...               BackboneInfo("my-encoder", dim=8))
    """
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise InputError("ids must be unique")
    with LatentWriter(path, backbone, normalized=normalized, dtype=dtype) as writer:
        sources = list(sources) if sources is not None else [""] * len(ids)
        table = writer._table(ids, sources, vectors, columns, None) if ids else None
        step = writer.row_group_rows  # row groups and parts as embed writes them
        for start in range(0, len(ids), step):
            writer.write_table(table.slice(start, step))
    return Path(path)
