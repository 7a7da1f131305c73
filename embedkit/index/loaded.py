"""A searchable index in memory and what its rows map to (ids, carried columns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedkit.errors import InputError
from embedkit.index.info import IndexInfo
from embedkit.index.tune import set_params
from embedkit.store.dataset import LatentDataset

__all__ = ["LoadedIndex"]


@dataclass
class LoadedIndex:
    """A searchable index and what it maps to.

    Attributes:
        index: the faiss index (on the GPU when one was used, else CPU).
        ids: latent id of each faiss row, as a numpy object array.
        info: the :class:`IndexInfo` (``index.json``).
        dataset: the latents it was built from.
    """

    index: faiss.Index
    ids: np.ndarray
    info: IndexInfo
    dataset: LatentDataset
    on_gpu: bool = False
    path: Path | None = None
    _arrow: dict[str, pa.Array] = field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        return self.info.metric

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, params: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss search of prepared (float32, normalized for cosine) ``queries``."""
        if not params:
            return self.index.search(queries, k)
        set_params(self.index, params)
        try:
            return self.index.search(queries, k)
        finally:
            set_params(self.index, {n: v for n, v in self.info.params.items() if n in params})

    @property
    def id_array(self) -> pa.Array:
        """The ids as a pyarrow ``large_string`` array (cached), in faiss row order."""
        if "id" not in self._arrow:
            self._arrow["id"] = pa.array(self.ids, pa.large_string())
        return self._arrow["id"]

    def rows_of(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """faiss row of each id (vectorized), -1 where the id is not indexed."""
        found = pc.index_in(pa.array(ids, pa.large_string()), value_set=self.id_array)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def columns(self, names: list[str]) -> dict[str, pa.Array]:
        """Carried columns of the latents as pyarrow arrays in faiss row order (cached)."""
        missing = [n for n in names if n not in self._arrow]
        if missing:
            table = self.dataset.to_table(["id", *[n for n in missing if n != "id"]])
            where = pc.index_in(self.id_array, value_set=table.column("id"))
            if where.null_count:
                raise InputError(
                    f"the index of {self.dataset.path} holds ids missing from the latents; "
                    f"re-run `embedkit index {self.dataset.path}`"
                )
            table = table.take(where)
            for name in missing:
                column = table.column(name).combine_chunks()
                if pa.types.is_string(column.type):
                    column = column.cast(pa.large_string())  # what pandas' str dtype holds
                self._arrow[name] = column
        return {n: self._arrow[n] for n in names}
