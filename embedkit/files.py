"""Atomic, durable file writes: write a hidden temp sibling, fsync it, rename it onto the
target, fsync the folder. A reader never sees half a file, and a power cut after the
rename cannot bring back the old one or leave an empty one.

A target on object storage (a :class:`~embedkit.location.RemotePath`) is written to a
local temp file first, then uploaded so that it appears whole (one object PUT, or a
hidden name and a move where a file system shows files being written)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.location import RemotePath

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["atomic_path", "atomic_write_table", "fsync_dir", "replace_durably"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be
    opened, as on Windows, or on object storage)."""
    if isinstance(folder, RemotePath):
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself still happened
    finally:
        os.close(fd)


def replace_durably(
    tmp: str | os.PathLike | RemotePath, path: str | os.PathLike | RemotePath
) -> None:
    """fsync ``tmp``, rename it onto ``path``, fsync the folder (on object storage: a
    move, whose target appears whole)."""
    if isinstance(tmp, RemotePath):
        tmp.replace(path)
        return
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextmanager
def atomic_path(path: str | os.PathLike | RemotePath) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; move it onto ``path`` (durably) if the
    block succeeds, delete it if not. Readers never see a half-written file.

    Example:
        >>> with atomic_path("out/grid.png") as tmp:
        ...     image.save(tmp, format="PNG")
    """
    if isinstance(path, RemotePath):
        with _uploaded(path) as tmp:
            yield tmp
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _uploaded(path: RemotePath) -> Iterator[Path]:
    """A local temp file, uploaded to ``path`` if the block succeeds; removed either way."""
    folder = Path(tempfile.mkdtemp(prefix="embedkit-upload-"))
    try:
        tmp = folder / path.name
        yield tmp
        path.upload(tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` as Parquet to ``path`` via a hidden temp file and a rename."""
    import pyarrow.parquet as pq  # this module stays importable without pyarrow loaded

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
