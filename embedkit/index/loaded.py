"""A searchable index in memory and what its rows map to (ids, carried columns), and
where each search runs: the GPU or the CPU (see :attr:`LoadedIndex.gpu`)."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedkit.errors import InputError
from embedkit.index.gpu import gpu_limit, set_search_params, stays_on_cpu, to_cpu, to_gpu
from embedkit.index.info import IndexInfo
from embedkit.index.recall_set import RecallSet
from embedkit.store.dataset import LatentDataset

__all__ = ["LoadedIndex", "flat_storage", "keeps_vectors"]

_direct_map_lock = threading.Lock()
_copy_lock = threading.Lock()  # one GPU (or CPU) copy of an index, however many threads search
_FEW = 8  # a string column with at most 1/8 as many distinct values as rows is kept encoded


def keeps_vectors(index: faiss.Index) -> bool:
    """Whether ``index.reconstruct`` gives back each added vector bit for bit: flat storage
    (``Flat``, ``IVF…,Flat``, ``HNSW…`` over a flat storage, an exact ``RFlat`` refine
    stage), never codes (PQ, SQ, a lossy refine), a transform or a GPU index."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat) or type(index) is faiss.IndexIVFFlat:
        return True
    if isinstance(index, faiss.IndexHNSW):
        return keeps_vectors(index.storage)
    if isinstance(index, faiss.IndexRefine):
        return keeps_vectors(index.refine_index)
    return False


def flat_storage(index: faiss.Index) -> faiss.Index | None:
    """The flat index holding every vector of ``index`` under the same row numbers: the
    index itself (``Flat``), an HNSW's storage, a refine stage; or None."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    elif isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.refine_index)
    return inner if isinstance(inner, faiss.IndexFlat) else None


@dataclass
class LoadedIndex:
    """A searchable index and what it maps to.

    Attributes:
        index: the faiss index (on the GPU when one was used, else CPU).
        ids: latent id of each faiss row, as a numpy object array.
        info: the :class:`IndexInfo` (``index.json``).
        dataset: the latents it was built from.
        on_gpu: whether ``index`` lives on a GPU.
        gpu: where a CPU ``index`` is searched: ``None`` on a GPU copy (made once, kept)
            when a search pays for it (:func:`~embedkit.index.gpu.gpu_pays`), ``True``
            always (:meth:`prepare_gpu` makes it), ``False`` never. Searches past faiss'
            GPU limits (k or nprobe > 2048) run on the CPU (for a GPU ``index``, on a
            copy made once) with a warning.
        part_of: each faiss row's part (a number in ``info.parts``; None: not known).
        recall: the recall queries and their exact neighbours: those it was built or
            updated with; a loaded index reads them when it updates or measures a filter.
    """

    index: faiss.Index
    ids: np.ndarray
    info: IndexInfo
    dataset: LatentDataset
    on_gpu: bool = False
    path: Path | None = None
    gpu: bool | None = False
    part_of: np.ndarray | None = field(default=None, repr=False)
    recall: RecallSet | None = field(default=None, repr=False)
    # what other modules derive from this index and keep with it (a filter's rows, ...)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    _arrow: dict[str, pa.Array] = field(default_factory=dict, repr=False)
    # caches made on first use, not copied by dataclasses.replace: id -> faiss row, and
    # whether the stored vectors can be read back from the index (None: not checked yet)
    _row_of: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    _keeps: bool | None = field(default=None, init=False, repr=False, compare=False)
    # the other copy of the index (GPU of a CPU one, CPU of a GPU one; None: not made,
    # False: cannot be made) and where the last search ran, and why not on the GPU
    _copy: Any = field(default=None, init=False, repr=False, compare=False)
    _searched: tuple[str, str | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def metric(self) -> str:
        return self.info.metric

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def searched_on(self) -> str | None:
        """``"gpu"`` or ``"cpu"``: where the last search ran (None: no search yet)."""
        return None if self._searched is None else self._searched[0]

    @property
    def search_note(self) -> str | None:
        """Why the last search ran on the CPU where a GPU could be used (else None)."""
        return None if self._searched is None else self._searched[1]

    def search(
        self, queries: np.ndarray, k: int, params: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss search of prepared (float32, normalized for cosine) ``queries``, on
        the GPU or the CPU as :attr:`gpu` and faiss' GPU limits say (:attr:`searched_on`)."""
        index = self._searcher(len(queries), k, params or {})
        if not params:
            return index.search(queries, k)
        set_search_params(index, params)
        try:
            return index.search(queries, k)
        finally:
            set_search_params(index, {n: v for n, v in self.info.params.items() if n in params})

    @property
    def gpu_index(self) -> faiss.Index | None:
        """The index on a GPU: ``index`` itself, or the copy made of a CPU one (None: none)."""
        if self.on_gpu:
            return self.index
        return self._copy or None

    def prepare_gpu(self) -> faiss.Index | None:
        """Make the GPU copy of a CPU ``index`` now, with its tuned parameters (None:
        faiss could not search it there with them, or no GPU has room; a warning says so)."""
        if self.on_gpu:
            return self.index
        limit = gpu_limit(1, self.info.params)
        if limit is not None:
            warnings.warn(f"the index stays on the CPU: its tuned {limit}", stacklevel=2)
            return None
        return self._other()

    def _searcher(self, n_queries: int, k: int, params: dict[str, float]) -> faiss.Index:
        """The index this search runs on (and :attr:`searched_on` set)."""
        limit = gpu_limit(k, {**self.info.params, **params})
        if self.on_gpu:
            if limit is None:
                return self._ran("gpu", None, self.index)
            warnings.warn(f"searching a CPU copy of the index: {limit}", stacklevel=3)
            return self._ran("cpu", limit, self._other())
        if self.gpu is False:
            return self._ran("cpu", None, self.index)
        if self.gpu is None and self._copy is None:  # not made yet: does this search pay?
            note = stays_on_cpu(n_queries, self.ntotal, self.info.dim)
            if note is not None:
                return self._ran("cpu", note, self.index)
        if limit is not None:
            warnings.warn(f"searching the index on the CPU: {limit}", stacklevel=3)
            return self._ran("cpu", limit, self.index)
        on_device = self._other()
        if on_device is None:
            return self._ran("cpu", "the index cannot go on a GPU", self.index)
        return self._ran("gpu", None, on_device)

    def on_cpu(self, why: str) -> faiss.Index:
        """The CPU index (for a GPU ``index``, its CPU copy, made once) for a search faiss
        cannot run on a GPU (``why``, e.g. a selector): :attr:`search_note` says so when a
        GPU is in play."""
        gpu_in_play = self.on_gpu or self.gpu is True or bool(self._copy)
        index = self._other() if self.on_gpu else self.index
        return self._ran("cpu", why if gpu_in_play else None, index)

    def _ran(self, where: str, note: str | None, index: faiss.Index) -> faiss.Index:
        self._searched = (where, note)
        return index

    def _other(self) -> faiss.Index | None:
        """The CPU copy of a GPU ``index``, or the GPU copy of a CPU one (None: no GPU
        version or no room), made once with the tuned parameters."""
        with _copy_lock:
            if self._copy is None:
                copy = to_cpu(self.index, True) if self.on_gpu else to_gpu(self.index)
                if copy is not None:
                    set_search_params(copy, self.info.params)
                self._copy = False if copy is None else copy
            return self._copy if self._copy is not False else None

    @property
    def id_array(self) -> pa.Array:
        """The ids as a pyarrow ``large_string`` array (cached), in faiss row order."""
        if "id" not in self._arrow:
            self._arrow["id"] = pa.array(self.ids, pa.large_string())
        return self._arrow["id"]

    def rows_of(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """faiss row of each id, -1 where the id is not indexed. The id -> row table is
        made on the first call (one dict, ~70 bytes an id); a lookup then costs ~0.1 us."""
        if self._row_of is None:
            n = len(self.ids)
            table = dict(zip(self.ids.tolist(), range(n), strict=True))
            if len(table) < n:  # a repeated id maps to its first row
                table = dict(zip(self.ids[::-1].tolist(), range(n - 1, -1, -1), strict=True))
            self._row_of = table
        get = self._row_of.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def rows_in_storage_order(self) -> np.ndarray:
        """The faiss row of each row of the dataset in storage order (-1: not indexed),
        matched by id (made once: one read of the id column and one hash join)."""
        if "storage rows" not in self.memo:
            stored = self.dataset.to_table(["id"]).column("id")
            rows = pc.index_in(stored, value_set=self.id_array)
            self.memo["storage rows"] = rows.fill_null(-1).to_numpy().astype(np.int64)
        return self.memo["storage rows"]

    def stored_vectors(self, rows: np.ndarray) -> np.ndarray | None:
        """The vectors at faiss ``rows`` exactly as they were added (prepared: float32,
        normalized for cosine), read back from the index, or None when the index keeps
        only codes (PQ, SQ), is on a GPU, or cannot reconstruct."""
        if self._keeps is None:
            self._keeps = not self.on_gpu and keeps_vectors(self.index)
        if not self._keeps:
            return None
        try:
            with _direct_map_lock:
                ivf: Any = faiss.downcast_index(self.index)
                if type(ivf) is faiss.IndexIVFFlat and ivf.direct_map.type == faiss.DirectMap.NoMap:
                    ivf.make_direct_map()  # row -> (list, offset): 8 bytes a row, made once
            return self.index.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))
        except RuntimeError:
            self._keeps = False
            return None

    def columns(self, names: list[str]) -> dict[str, pa.Array]:
        """Carried columns of the latents as pyarrow arrays in faiss row order (cached)."""
        self._load_columns(names)
        return {n: _decoded(self._arrow[n]) for n in names}

    def take_columns(self, names: list[str], rows: pa.Array) -> dict[str, pa.Array]:
        """Carried columns at faiss ``rows``, one take each. A string column with few
        distinct values is cached dictionary-encoded, so its take moves 4-byte codes, not
        strings scattered over the whole column; it comes back decoded."""
        self._load_columns(names)
        return {n: _decoded(self._arrow[n].take(rows)) for n in names}

    def _load_columns(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self._arrow]
        if not missing:
            return
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
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                column = column.cast(pa.large_string())  # what pandas' str dtype holds
                codes = column.dictionary_encode()
                if len(codes.dictionary) * _FEW <= len(column):
                    column = codes
            self._arrow[name] = column


def _decoded(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array
