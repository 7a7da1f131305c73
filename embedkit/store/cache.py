"""The vector cache: the vectors of a latent dataset as one ``.npy`` file, derived from
the parts and memory-mapped read-only on later reads::

    latents/.embedkit/cache/vectors-<fingerprint>.npy

It is named by :meth:`LatentDataset.fingerprint` (each part's name, size, rows,
modification time and inode) and served only while that matches, its shape and dtype
match, and it is newer than every part: a part written in the same clock tick as the
cache could later be rewritten in place without changing its mtime, so such a cache is
never trusted (git's "racily clean" rule). It is written atomically (``atomic_path``),
never while that would leave less than :data:`MIN_FREE_BYTES` free (a writer appending to
the dataset needs the room), and a folder that cannot be written (read-only, full) just
leaves reads uncached. Stale caches are deleted when a full read finds them.

Whether it is used is :func:`cache_mode`: ``auto`` (the default) writes it only for
datasets whose vectors Arrow has to decode (not stored plain: older or foreign parts),
since plain parts already read at disk speed; ``on`` always; ``off`` never reads or
writes it. ``open_latents(path, cache=...)`` or ``$EMBEDKIT_VECTOR_CACHE`` choose.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from embedkit.errors import InputError
from embedkit.files import atomic_path
from embedkit.store.lock import STATE_DIR

__all__ = [
    "CACHE_ENV",
    "MIN_FREE_BYTES",
    "cache_file",
    "cache_mode",
    "load_cache",
    "remove_stale",
    "write_cache",
]

CACHE_ENV = "EMBEDKIT_VECTOR_CACHE"
CACHE_DIR = "cache"
#: a cache is not written when it would leave less free space than this (or its size)
MIN_FREE_BYTES = 1 << 30
#: temp files of a cache being written are removed once this old (a killed reader's)
STALE_TEMP_SECONDS = 3600
WORDS = {
    "auto": "auto",
    "": "auto",
    **dict.fromkeys(("on", "1", "true", "yes"), "on"),
    **dict.fromkeys(("off", "0", "false", "no"), "off"),
}


class _Racy(Exception):
    """The cache would be no newer than a part: it could not tell a later rewrite."""


def cache_mode(value: bool | str | None = None) -> str:
    """``auto``, ``on`` or ``off`` from ``cache=`` (True/False/"auto"/...), or from
    ``$EMBEDKIT_VECTOR_CACHE`` when ``value`` is None."""
    if value is None:
        value = os.environ.get(CACHE_ENV, "auto")
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = WORDS.get(str(value).strip().lower())
    if mode is None:
        raise InputError(
            f"vector cache setting {value!r} (cache= or ${CACHE_ENV}) is not auto, on or off"
        )
    return mode


def cache_folder(root: Path) -> Path:
    return Path(root) / STATE_DIR / CACHE_DIR


def cache_file(root: Path, fingerprint: str) -> Path:
    """Where the cache of the dataset at ``root`` with this fingerprint lives."""
    return cache_folder(root) / f"vectors-{fingerprint}.npy"


def load_cache(
    root: Path, fingerprint: str, shape: tuple[int, int], dtype: np.dtype, newest_ns: int
) -> np.ndarray | None:
    """The cached vectors as a read-only memory map, or None (no cache, a damaged one,
    another shape or dtype, or one not newer than the newest part, ``newest_ns``)."""
    path = cache_file(root, fingerprint)
    try:
        if path.stat().st_mtime_ns <= newest_ns:
            return None
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if mapped.shape != shape or mapped.dtype != dtype:
        return None
    return mapped.view(np.ndarray)  # a plain array over the read-only map, which it keeps


def write_cache(root: Path, fingerprint: str, vectors: np.ndarray, newest_ns: int) -> Path | None:
    """Write ``vectors`` as the cache of the dataset at ``root`` and return its path; None
    (and nothing left behind) when the folder cannot take it or a part is as new as it."""
    path = cache_file(root, fingerprint)
    vectors = np.ascontiguousarray(vectors)
    if not len(vectors):
        return None
    try:
        if shutil.disk_usage(root).free - vectors.nbytes < max(MIN_FREE_BYTES, vectors.nbytes):
            return None
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            header = np.lib.format.header_data_from_array_1_0(vectors)
            np.lib.format.write_array_header_1_0(handle, header)
            handle.flush()
            if os.fstat(handle.fileno()).st_mtime_ns <= newest_ns:
                raise _Racy
            handle.write(memoryview(vectors).cast("B"))
    except (OSError, _Racy):
        return None
    return path


def remove_stale(root: Path, keep: str | None = None) -> None:
    """Delete the caches of ``root`` other than ``keep``, and abandoned temp files."""
    try:
        entries = list(cache_folder(root).iterdir())
    except OSError:
        return
    old = time.time() - STALE_TEMP_SECONDS
    for entry in entries:
        name = entry.name
        stale = name.startswith("vectors-") and name.endswith(".npy") and name != keep
        try:
            if stale or (name.startswith(".vectors-") and entry.stat().st_mtime < old):
                entry.unlink()
        except OSError:
            pass  # read-only, already gone, or (Windows) still mapped by a reader
