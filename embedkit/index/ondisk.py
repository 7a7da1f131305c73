"""Inverted lists on disk: an IVF index whose lists live in a ``.ivfdata`` file beside
the index file (faiss ``OnDiskInvertedLists``), memory-mapped, so an index larger than
RAM can be built and searched. Only the coarse quantizer (and any transform) stays in RAM.

The lists are moved to disk right after training, before any row is added; rows are then
added (or shards merged) straight into the file. Saved, the index file names the
``.ivfdata`` file, which is read from the index file's own folder
(``IO_FLAG_ONDISK_SAME_DIR``) and read-only: a saved on-disk index is never modified in
place (an update rebuilds it).

faiss prints each growth of the lists file on C's stdout; :func:`faiss_quiet` sends
that to /dev/null while Python's own output still reaches the terminal.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss

from embedkit.errors import InputError
from embedkit.index.choose import IndexChoice

__all__ = [
    "LISTS_SUFFIX",
    "check_on_disk",
    "faiss_quiet",
    "lists_file",
    "lists_to_disk",
    "on_disk_choice",
    "read_on_disk",
]

LISTS_SUFFIX = ".ivfdata"


def _on_disk_capable(index: faiss.Index) -> bool:
    """An IVF index (under transforms) with plain lists: no refine stage (its vectors
    would sit in RAM) and no fast-scan codes (faiss keeps those in blocks in RAM)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        return _on_disk_capable(inner.index)
    return isinstance(inner, faiss.IndexIVF) and not isinstance(inner, faiss.IndexIVFFastScan)


def check_on_disk(index: faiss.Index, factory: str) -> None:
    """A one-line error unless ``index``'s lists can live on disk."""
    if not _on_disk_capable(index):
        raise InputError(
            f"{factory} cannot keep its lists on disk (faiss' on-disk lists take IVF indexes "
            "without a refine stage or fast-scan codes); use --kind ivf, ivfsq, ivfpq or "
            "a factory such as 'IVF4096,PQ32', or drop --on-disk"
        )


def on_disk_choice(choice: IndexChoice) -> IndexChoice:
    """``choice`` as an on-disk index: no refine stage, 8-bit PQ codes for fast-scan ones
    (``IVF1024,PQ16x4fs,RFlat`` -> ``IVF1024,PQ16``); other factories unchanged."""
    factory = re.sub(r",(RFlat|Refine\([^)]*\))$", "", choice.factory)
    factory = re.sub(r"(PQ\d+)x4fs", r"\1", factory)
    if factory == choice.factory:
        return choice
    why = f"{choice.reason}; on disk as {factory} (no refine stage or fast-scan codes)"
    return IndexChoice(choice.kind, factory, why, None)


def lists_to_disk(index: faiss.Index, path: Path) -> None:
    """Give the trained, empty ``index`` inverted lists in the file ``path``."""
    ivf = faiss.extract_index_ivf(index)
    if ivf.ntotal:
        raise ValueError("lists move to disk before any row is added")
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns them now


def lists_file(index: faiss.Index) -> str | None:
    """The file holding ``index``'s inverted lists, or None when they are in RAM."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists.filename if isinstance(lists, faiss.OnDiskInvertedLists) else None


def read_on_disk(path: Path) -> faiss.Index:
    """An on-disk index saved at ``path``: its lists file read from the same folder,
    memory-mapped read-only."""
    with faiss_quiet():
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


@contextmanager
def faiss_quiet() -> Iterator[None]:
    """C's stdout to /dev/null (faiss' on-disk lists print there); Python's stdout, when
    it is that same descriptor, goes on to the terminal meanwhile."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    python_out, swapped = sys.stdout, _writes_fd1(sys.stdout)
    if swapped:
        sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb"), line_buffering=True)
    os.dup2(null, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what faiss printed goes to /dev/null, not later
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
        if swapped:
            sys.stdout.close()
            sys.stdout = python_out


def _writes_fd1(stream: object) -> bool:
    try:
        return stream.fileno() == 1  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
