"""Atomic file writes: write to a hidden temp sibling, then rename onto the target."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["atomic_path", "atomic_write_table"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; move it onto ``path`` if the block
    succeeds, delete it if not. Readers never see a half-written file.

    Example:
        >>> with atomic_path("out/grid.png") as tmp:
        ...     image.save(tmp, format="PNG")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` as Parquet to ``path`` via a hidden temp file and a rename."""
    import pyarrow.parquet as pq  # this module stays importable without pyarrow loaded

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
