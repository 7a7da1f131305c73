"""Writing latent datasets: one writer at a time (a lock), parts that appear only when
complete and durable, errors recorded as they happen.

The writer stages its own parts (:mod:`.staging`) and commits each as it closes; it also
commits parts staged by others (Ray workers) while it holds the lock, so every visible
part went through the one writer.

On object storage (``s3://...``) a part is staged as a hidden object and moved to its
name when complete (a server-side copy: the part appears whole, at once); the lock is an
:class:`~embedkit.store.lock.ObjectLock`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from embedkit.errors import InputError
from embedkit.files import atomic_write_table, replace_durably
from embedkit.location import RemotePath, locate
from embedkit.plugins.info import BackboneInfo
from embedkit.store.format import ERRORS_DIR, LatentMeta, part_files, read_meta, read_schema
from embedkit.store.lock import writer_lock
from embedkit.store.parts import next_part_name
from embedkit.store.staging import STAGED_GLOB, PartStager, StagedPart, check_staged
from embedkit.store.tables import DTYPES, cast_rows, latent_schema, rows_table
from embedkit.version import __version__

__all__ = ["LatentWriter", "write_latents"]

#: recorded errors are written at the latest after this many or this many seconds
ERRORS_PER_FLUSH = 256
SECONDS_PER_ERROR_FLUSH = 5.0


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
        path: str | Path | RemotePath,
        backbone: BackboneInfo,
        normalized: bool = False,
        dtype: str = "float32",
        rows_per_part: int = 100_000,
        seconds_per_part: float = 60.0,
        row_group_rows: int | None = None,
    ):
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; use float32 or float16")
        self.path = locate(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta = LatentMeta(
            backbone=backbone,
            dim=backbone.dim,
            normalized=normalized,
            dtype=dtype,
            embedkit_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.schema: pa.Schema | None = None
        self._lock = writer_lock(self.path).acquire()
        try:
            for stale in self.path.glob(STAGED_GLOB):
                stale.unlink()  # left by an interrupted run: never a complete part
            self._check_existing()
        except BaseException:  # refused: an object lock is not released by the OS
            self._lock.release()
            raise
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        # ~32 MiB of vectors per row group: big enough for fast scans, small enough that
        # memory stays flat for wide embeddings
        itemsize = 2 if dtype == "float16" else 4
        self.row_group_rows = row_group_rows or max(
            256, min(16_384, (32 << 20) // (backbone.dim * itemsize))
        )
        self._stager: PartStager | None = None
        self._committed = 0
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
        self.schema = read_schema(files[0])

    @property
    def rows_written(self) -> int:
        """Rows in committed parts and in the part being written."""
        return self._committed + (self._stager.open_rows if self._stager else 0)

    # -- rows ---------------------------------------------------------------
    def _table(
        self,
        ids: Sequence[str],
        sources: Sequence[str],
        vectors: np.ndarray,
        columns: pd.DataFrame | dict[str, Sequence[Any]] | None,
        stats: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> pa.Table:
        table = rows_table(self.meta, ids, sources, vectors, columns, stats)
        if self.schema is None:
            self.schema = latent_schema(self.meta, table.schema)
        return cast_rows(table, self.schema, self.path)

    def fix_schema(self, columns: pa.Schema | None = None) -> pa.Schema:
        """The schema of this dataset's parts for rows carrying ``columns``: the existing
        parts' (checking ``columns`` fit it, in one line), else the one they make. Part
        writers elsewhere get it before any row is written."""
        empty = {field.name: pa.array([], field.type) for field in columns or []}
        self._table([], [], np.zeros((0, self.meta.dim), np.float32), empty)
        return self.schema

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
        if self._stager is None:
            self._stager = PartStager(
                self.path,
                self.schema,
                rows_per_part=self.rows_per_part,
                seconds_per_part=self.seconds_per_part,
                row_group_rows=self.row_group_rows,
                stem=lambda: Path(next_part_name(self.path)).stem,
            )
        buffered = self._stager.open_rows
        closed = self._stager.write(table)
        if self._stager.open_rows != buffered or closed:
            self.flush_errors()  # errors are written whenever rows are
        for staged in closed:
            self._commit_own(staged)

    def _commit_own(self, staged: StagedPart) -> None:
        # its number was the next one when it was opened; nobody else commits meanwhile
        final = staged.name[1 : -len(".tmp")] + ".parquet"
        replace_durably(self.path / staged.name, self.path / final)
        self._committed += staged.rows

    def commit(self, staged: StagedPart) -> Path:
        """Make a part staged in this folder by another process (a Ray worker) visible:
        checked to be complete and in this dataset's schema, renamed to the next part
        name durably. Returns its new path."""
        tmp = self.path / staged.name
        check_staged(tmp, staged, self.schema)
        final = self.path / next_part_name(self.path)
        replace_durably(tmp, final)
        self._committed += staged.rows
        self.flush_errors()
        return final

    def flush(self) -> None:
        """Make every row and error recorded so far durable, as complete parts."""
        if self._stager is not None:
            closed = self._stager.close()
            self.flush_errors()
            for staged in closed:
                self._commit_own(staged)
        self.flush_errors()

    def write_errors(self, sources: Sequence[str], reasons: Sequence[str]) -> None:
        """Record inputs that could not be embedded. They are written (atomically, as an
        errors part) within seconds or a few hundred errors, and whenever rows are; a
        call without errors writes the ones that are due."""
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
            if self._stager is not None:
                self._stager.abort()
            self._lock.release()


def write_latents(
    path: str | Path | RemotePath,
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
    return locate(path)
