"""Writing latent datasets atomically: parts appear only when complete."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.errors import InputError
from embedkit.files import atomic_write_table
from embedkit.plugins.info import BackboneInfo
from embedkit.store.format import (
    EMBEDDING,
    ERRORS_DIR,
    META_KEY,
    PART_GLOB,
    LatentMeta,
    part_files,
    read_meta,
)
from embedkit.version import __version__

__all__ = ["LatentWriter", "write_latents"]

DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
_PART_NUMBER = re.compile(r"part-(\d+)\.parquet$")


# Parquet stores a list column's floats with per-value levels; compressing or
# dictionary-encoding them on top costs ~40% of read speed for almost no size (float
# latents barely compress), so the embedding column is written plain.
EMBEDDING_PATH = f"{EMBEDDING}.list.element"


def parquet_options(schema: pa.Schema) -> dict:
    """Writer options: snappy + dictionary for metadata columns, plain vectors."""
    others = [name for name in schema.names if name != EMBEDDING]
    compression = {name: "snappy" for name in others} | {EMBEDDING_PATH: "none"}
    return {"compression": compression, "use_dictionary": others}


def _next_part_number(directory: Path) -> int:
    numbers = [
        int(m.group(1)) for f in directory.glob(PART_GLOB) if (m := _PART_NUMBER.search(f.name))
    ]
    return max(numbers, default=-1) + 1


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
    vectors); a part is closed and renamed into place after ``rows_per_part`` rows or
    ``seconds_per_part`` seconds, so an interrupted run loses at most one part's worth
    of work. Appending to an existing dataset made by another backbone is refused.
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

    def _check_existing(self) -> None:
        files = part_files(self.path)
        if not files:
            return
        existing = read_meta(files[0])
        if not existing.backbone.compatible_with(self.meta.backbone):
            raise InputError(
                f"{self.path} holds latents from backbone {existing.backbone.name} "
                f"{existing.backbone.config}; refusing to add {self.meta.backbone.name} "
                f"{self.meta.backbone.config} — write to a new folder"
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
        }
        items = columns.items() if columns is not None else []
        for name, values in items:
            if name in ("id", "source", EMBEDDING):
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
    ) -> None:
        """Buffer one batch of rows; flushes row groups and parts as they fill."""
        if len(ids) == 0:
            return
        table = self._table(ids, sources, vectors, columns)
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
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            number = _next_part_number(self.path)
            self._final = self.path / f"part-{number:05d}.parquet"
            self._tmp = self.path / f".part-{number:05d}.{uuid.uuid4().hex[:8]}.tmp"
            self._writer = pq.ParquetWriter(self._tmp, self.schema, **parquet_options(self.schema))
            self._part_rows = 0
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._part_rows += table.num_rows
        self.rows_written += table.num_rows

    def _close_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        os.replace(self._tmp, self._final)
        self._writer = self._tmp = self._final = None
        self._part_rows = 0

    def flush(self) -> None:
        """Make every row written so far durable as complete parts."""
        self._flush_row_group()
        self._close_part()

    def write_errors(self, sources: Sequence[str], reasons: Sequence[str]) -> None:
        """Record inputs that could not be embedded (written atomically at once)."""
        if not sources:
            return
        directory = self.path / ERRORS_DIR
        directory.mkdir(exist_ok=True)
        table = pa.table(
            {
                "source": pa.array(list(sources), pa.string()),
                "reason": pa.array(list(reasons), pa.string()),
            }
        )
        atomic_write_table(table, directory / f"part-{_next_part_number(directory):05d}.parquet")
        self.errors_written += len(sources)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> LatentWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or exc_type is KeyboardInterrupt:
            self.close()  # keep the rows that finished; a re-run resumes after them
        elif self._writer is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)


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
        writer.write(
            ids, list(sources) if sources is not None else [""] * len(ids), vectors, columns
        )
    return Path(path)
