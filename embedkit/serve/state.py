"""What the explorer keeps while it serves one latent dataset: the dataset as it is now
(re-opened when a part changes), its label table and thumbnails, which index answers
searches, the backbone (loaded on first use), attribute vectors and projections.

Every request asks :meth:`ServeState.current` for the version of the dataset; it costs a
``listdir`` and a ``stat`` per part, and a changed part means a new :class:`Version`
(new fingerprint, label table, thumbnail folder, caches).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedkit.errors import InputError, first_line
from embedkit.index.info import INDEX_DIR, INFO_FILE, IndexInfo
from embedkit.index.persist import read_info
from embedkit.serve.responses import ApiError, short
from embedkit.serve.table import LabelTable
from embedkit.serve.thumbs import ThumbCache
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.store.format import part_stamps

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from embedkit.plugins.backbone import Backbone

__all__ = ["ServeState", "Version"]

#: attribute vectors and projections kept (the oldest are dropped)
KEPT_VECTORS = 64
KEPT_PROJECTIONS = 4


class Version:
    """One version of the dataset: opened, fingerprinted, its label table read on demand."""

    def __init__(self, ds: LatentDataset, stats: tuple):
        self.ds = ds
        self.stats = stats
        self.fingerprint = ds.fingerprint()
        self.thumbs = ThumbCache(ds.path, self.fingerprint)
        self._table: LabelTable | None = None
        self._lock = threading.Lock()

    @property
    def table(self) -> LabelTable:
        return self.load_table()

    def load_table(self) -> LabelTable:
        """The label table, read on first use."""
        with self._lock:
            if self._table is None:
                self._table = LabelTable.read(self.ds)
            return self._table

    def row_of(self, id_: str) -> int:
        """The row of ``id_``; 404 when the dataset has no such id."""
        row = self.table.row_of(id_)
        if row is None:
            raise ApiError(404, f"id {short(id_)} is not in the dataset")
        return row

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored latents of ``ids`` (known to be in the dataset), float32."""
        return np.asarray(self.ds.vectors_of(ids), dtype=np.float32)


class _Kept:
    """A small LRU of values made on demand; a value is made once even under concurrency
    (makes are serialized: they are rare and heavy)."""

    def __init__(self, size: int):
        self.size = size
        self.values: OrderedDict[Hashable, Any] = OrderedDict()
        self.lock = threading.Lock()
        self.making = threading.Lock()

    def _hit(self, key: Hashable) -> tuple[bool, Any]:
        with self.lock:
            if key in self.values:
                self.values.move_to_end(key)
                return True, self.values[key]
            return False, None

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        found, value = self._hit(key)
        if found:
            return value
        with self.making:
            found, value = self._hit(key)  # made by another request meanwhile
            if found:
                return value
            value = make()
            with self.lock:
                self.values[key] = value
                while len(self.values) > self.size:
                    self.values.popitem(last=False)
            return value


class ServeState:
    """The dataset an explorer serves, and what it keeps between requests.

    Example:
        >>> state = ServeState("latents/")
        >>> version = state.current()
        >>> version.table.page(0, 60)
    """

    def __init__(self, latents: str | Path | LatentDataset, backbone: Backbone | None = None):
        if isinstance(latents, LatentDataset) and latents.expression is not None:
            raise InputError("serve a whole latent dataset, not a filtered view")
        self.path = Path(latents.path if isinstance(latents, LatentDataset) else latents)
        self._lock = threading.Lock()
        self._version: Version | None = None
        self._index: tuple[tuple, IndexInfo | None] | None = None
        self._backbone = backbone
        self._backbone_error: str | None = None
        self._backbone_lock = threading.Lock()
        self.model_lock = threading.Lock()  # one forward pass at a time
        self.vectors = _Kept(KEPT_VECTORS)
        self.projections = _Kept(KEPT_PROJECTIONS)
        self.current()  # a folder that is no dataset fails now, not on the first request

    @property
    def name(self) -> str:
        return self.path.resolve().name or str(self.path)

    def current(self) -> Version:
        """The dataset as it is now (a new :class:`Version` when a part changed)."""
        try:
            stats = part_stamps(self.path)
        except OSError:
            stats = None
        with self._lock:
            version = self._version
            if version is None or stats is None or version.stats != stats:
                version = Version(open_latents(self.path), stats or ())
                self._version = version
            return version

    def warm(self) -> None:
        """Read the label table now, and load the backbone in the background, rather
        than on first use (``/api/info`` asks whether it decodes)."""
        self.current().load_table()
        threading.Thread(target=self.decodes, name="embedkit-backbone", daemon=True).start()

    # -- the index --------------------------------------------------------------
    def index_info(self, version: Version) -> IndexInfo | None:
        """The saved index when it was built from this version, else None (search exact)."""
        path = self.path / INDEX_DIR / INFO_FILE
        try:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, version.fingerprint)
        except OSError:
            return None
        with self._lock:
            if self._index is not None and self._index[0] == stamp:
                return self._index[1]
        try:
            info = read_info(version.ds)
        except InputError:
            info = None  # a damaged index.json: search exactly rather than fail
        if info is not None and info.fingerprint != version.fingerprint:
            info = None  # stale: `embedkit index` rebuilds it; meanwhile exact search
        with self._lock:
            self._index = (stamp, info)
        return info

    def search_index(self, version: Version) -> Literal["exact"] | None:
        """What :func:`embedkit.neighbors` gets as ``index=``: None (the saved index) when
        it is current, else ``"exact"``."""
        return None if self.index_info(version) is not None else "exact"

    def metric(self, version: Version) -> str:
        info = self.index_info(version)
        return info.metric if info is not None else "cosine"

    # -- the backbone ---------------------------------------------------------------
    def backbone(self) -> Backbone:
        """The backbone that made the latents, loaded once; 503 when it cannot be loaded
        here (not installed, weights missing)."""
        with self._backbone_lock:
            if self._backbone is None and self._backbone_error is None:
                from embedkit.plugins.registry import load_backbone

                try:
                    self._backbone = load_backbone(self.current().ds.backbone)
                except Exception as exc:  # a plugin may fail in any way; the page goes on
                    self._backbone_error = first_line(exc, 300)
            if self._backbone is None:
                raise ApiError(503, f"the backbone cannot be loaded: {self._backbone_error}")
            return self._backbone

    def decodes(self) -> bool:
        """Whether the backbone turns latents back into images."""
        try:
            return bool(self.backbone().can_decode)
        except ApiError:
            return False

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        backbone = self.backbone()
        with self.model_lock:
            return backbone.encode_images(images).numpy().astype(np.float32)

    def decode(self, latents: np.ndarray) -> list[Image.Image]:
        backbone = self.backbone()
        with self.model_lock:
            return backbone.decode_images(np.asarray(latents, dtype=np.float32))

    # -- derived from the latents -------------------------------------------------------
    def attribute(self, version: Version, column: str, value: str) -> np.ndarray:
        """``centroid(column == value) - centroid(rest)``, computed once per version."""
        from embedkit.algebra.attributes import attribute_vector

        if column not in version.table.labels:
            raise ApiError(400, f"no label column {short(column)}")

        def make() -> np.ndarray:
            return attribute_vector(version.ds, column, positive=value).vector

        return self.vectors.get((version.fingerprint, column, value), make)

    def projection(self, version: Version, limit: int, method: str = "pca") -> pd.DataFrame:
        """A 2-D map (``method``: pca, umap, tsne) of (a sample of ``limit`` of) the rows:
        ``id, x, y``."""
        try:
            from embedkit.algebra.projection import project
        except ImportError:
            raise ApiError(503, "this embedkit has no embedkit.algebra.projection") from None

        def make() -> pd.DataFrame:
            return project(version.ds, method=method, sample=limit, seed=0)

        return self.projections.get((version.fingerprint, limit, method), make)
