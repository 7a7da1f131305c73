"""Atomic, durable file writes: write a hidden temp sibling, fsync it, rename it onto the
target, fsync the folder. A reader never sees half a file, and a power cut after the
rename cannot bring back the old one or leave an empty one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["atomic_path", "atomic_write_table", "fsync_dir", "replace_durably"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be
    opened, as on Windows)."""
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


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync ``tmp``, rename it onto ``path``, fsync the folder."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; move it onto ``path`` (durably) if the
    block succeeds, delete it if not. Readers never see a half-written file.

    Example:
        >>> with atomic_path("out/grid.png") as tmp:
        ...     image.save(tmp, format="PNG")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` as Parquet to ``path`` via a hidden temp file and a rename."""
    import pyarrow.parquet as pq  # this module stays importable without pyarrow loaded

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
