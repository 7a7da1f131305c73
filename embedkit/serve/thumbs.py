"""Thumbnails of a dataset's images, made once and kept in the dataset folder under
``.embedkit/thumbs/<fingerprint>/``: a changed dataset has another fingerprint, so
another folder, and thumbnails of an older version are never served (nor kept).

File names are digests of (id, size), never the id itself, and the image read is the
one the dataset's ``source`` column names for an id in the dataset: a request can name
neither a path to read nor one to write.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
from pathlib import Path

from PIL import Image

from embedkit.files import atomic_path
from embedkit.images.decode import load_image
from embedkit.store.lock import STATE_DIR

__all__ = ["MAX_SIZE", "MIN_SIZE", "THUMBS_DIR", "ThumbCache", "make_thumbnail"]

THUMBS_DIR = "thumbs"
MIN_SIZE, MAX_SIZE = 64, 512
JPEG_QUALITY = 85


def make_thumbnail(source: str | Path, size: int) -> bytes:
    """The image at ``source`` fitted into a ``size`` square (never enlarged), as JPEG."""
    image = load_image(source, min_side=size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class ThumbCache:
    """Thumbnails of one dataset version, on disk.

    Example:
        >>> cache = ThumbCache("latents/", ds.fingerprint())
        >>> cache.get("images/00042.png", 128) or cache.put("images/00042.png", 128, data)
    """

    def __init__(self, root: str | Path, fingerprint: str):
        self.base = Path(root) / STATE_DIR / THUMBS_DIR
        self.folder = self.base / fingerprint
        self.fingerprint = fingerprint
        self._pruned = False
        self._lock = threading.Lock()

    def path_for(self, id_: str, size: int) -> Path:
        """Where the thumbnail of ``id_`` at ``size`` lives: two hex digits of a sha256 of
        the id, then the digest (ids may hold any characters, ``/`` and ``..`` included)."""
        digest = hashlib.sha256(f"{size}\0{id_}".encode()).hexdigest()[:40]
        return self.folder / digest[:2] / f"{digest}-{size}.jpg"

    def get(self, id_: str, size: int) -> bytes | None:
        """The cached thumbnail, or None. Only ids of this version were ever written."""
        try:
            return self.path_for(id_, size).read_bytes()
        except OSError:
            return None

    def put(self, id_: str, size: int, data: bytes) -> None:
        """Keep ``data`` (atomically). A folder that cannot be written (a read-only
        dataset) is no error: thumbnails are then made on each request."""
        self._prune_older()
        try:
            with atomic_path(self.path_for(id_, size)) as tmp:
                tmp.write_bytes(data)
        except OSError:
            pass

    def _prune_older(self) -> None:
        """Delete the folders of other fingerprints (older versions), once."""
        with self._lock:
            if self._pruned:
                return
            self._pruned = True
        try:
            others = [p for p in self.base.iterdir() if p.name != self.fingerprint]
        except OSError:
            return
        for other in others:
            shutil.rmtree(other, ignore_errors=True)
