"""Staged parts: rows written to hidden part files that no reader sees until the dataset's
one writer commits them (renames them to ``part-NNNNN-<token>.parquet``).

A :class:`PartStager` buffers rows into row groups and closes a part after so many rows
or seconds; the :class:`~embedkit.store.writer.LatentWriter` stages its own parts this
way, and so does each part writer on a Ray worker, which hands its closed parts to the
driver to commit. Stale staged files of a killed run match ``.part-*.tmp`` and are
deleted by the next writer.

The folder may be local or on object storage (a URI or
:class:`~embedkit.location.RemotePath`): the stager writes through its ``pyarrow.fs``
file system.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.errors import InputError
from embedkit.location import RemotePath, arrow_source
from embedkit.store.format import META_KEY, parquet_metadata
from embedkit.store.parts import parquet_options

__all__ = ["STAGED_GLOB", "PartStager", "StagedPart", "check_staged", "staged_stem"]

#: every staged (or otherwise unfinished) part file of a dataset folder
STAGED_GLOB = ".part-*.tmp"


@dataclass(frozen=True)
class StagedPart:
    """A complete part under its hidden name in the dataset folder, not yet visible."""

    name: str
    rows: int


def staged_stem() -> str:
    """A part stem no other stager picks: ``part-w<token>`` (numbered when committed)."""
    return f"part-w{uuid.uuid4().hex[:12]}"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartStager:
    """Writes rows already in the dataset's ``schema`` to staged parts in ``folder``.

    Rows are buffered into row groups of ``row_group_rows``; a part is closed after
    ``rows_per_part`` rows (buffered ones count) or ``seconds_per_part`` seconds from its
    first row, never splitting a batch. :meth:`write` and :meth:`close` return the parts
    they closed. ``stem`` names each new part (its file is ``.<stem>.tmp``); ``durable``
    fsyncs a part when it closes (a local ``folder`` only: an object appears whole), for a
    committer on another machine.
    """

    def __init__(
        self,
        folder: str | os.PathLike | RemotePath,
        schema: pa.Schema,
        *,
        rows_per_part: int,
        seconds_per_part: float,
        row_group_rows: int,
        stem: Callable[[], str] = staged_stem,
        durable: bool = False,
    ):
        self.folder, self._filesystem = arrow_source(folder)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self.row_group_rows = row_group_rows
        self._stem = stem
        self._durable = durable and self._filesystem is None
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._name: str | None = None
        self._started = 0.0
        self.open_rows = 0  # rows flushed into the open part

    def write(self, table: pa.Table) -> list[StagedPart]:
        """Buffer rows; flush row groups and close the part as they fill."""
        if self._writer is None and not self._buffered:
            self._started = time.monotonic()  # a part's clock starts at its first row
        self._buffer.append(table)
        self._buffered += table.num_rows
        part_due = (
            self.open_rows + self._buffered >= self.rows_per_part
            or time.monotonic() - self._started >= self.seconds_per_part
        )
        if part_due or self._buffered >= self.row_group_rows:
            self.flush_row_group()
        return self._close_part() if part_due else []

    def flush_row_group(self) -> None:
        """Write the buffered rows as one row group of the open part (opening one)."""
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            self._name = f".{self._stem()}.tmp"
            self._writer = pq.ParquetWriter(
                self._path(self._name),
                self.schema,
                filesystem=self._filesystem,
                **parquet_options(self.schema),
            )
            self.open_rows = 0
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.open_rows += table.num_rows

    def close(self) -> list[StagedPart]:
        """Write everything buffered and close the open part."""
        self.flush_row_group()
        return self._close_part()

    def abort(self) -> None:
        """Drop the open part and the buffered rows (the run failed)."""
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            return
        self._writer.close()
        path = self._path(self._name)
        if self._filesystem is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            self._filesystem.delete_file(path)
        self._writer = self._name = None
        self.open_rows = 0

    def _close_part(self) -> list[StagedPart]:
        if self._writer is None:
            return []
        self._writer.close()
        if self._durable:
            _fsync(self._path(self._name))
        staged = StagedPart(self._name, self.open_rows)
        self._writer = self._name = None
        self.open_rows = 0
        return [staged]

    def _path(self, name: str) -> str:
        return f"{self.folder}/{name}"


def check_staged(
    path: str | os.PathLike | RemotePath, staged: StagedPart, schema: pa.Schema
) -> None:
    """Refuse to commit a staged part that is missing here, incomplete, or of another
    schema (one line each): it would otherwise become a visible, wrong part."""
    try:
        metadata = parquet_metadata(path)
    except FileNotFoundError:
        raise InputError(
            f"{path} (a part a worker wrote) is not there as seen from this machine: the "
            "output folder must be on a file system every node shares, at the same path"
        ) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path} (a part a worker wrote) is not readable ({exc})") from exc
    # names and the dataset's metadata, not types: a Parquet round trip renames list items
    found = metadata.schema.to_arrow_schema()
    ours = (found.metadata or {}).get(META_KEY) == (schema.metadata or {}).get(META_KEY)
    if metadata.num_rows != staged.rows or found.names != schema.names or not ours:
        raise InputError(
            f"{path} holds {metadata.num_rows} rows of columns {found.names}, not the "
            f"{staged.rows} rows of this dataset's {schema.names} its writer reported"
        )
