"""Taking rows out of a faiss index with ``remove_ids`` while faiss rows stay numbered
``0 .. ntotal-1`` in the order they were added (what ``ids.parquet``, the results and
the curation jobs rely on).

A flat index (``Flat``, SQ or PQ codes without lists) closes the gaps itself. An IVF index
keeps the removed rows' numbers free, so the ids in its lists are renumbered afterwards
(each list's id array, in place). A refine stage (``RFlat``, ``Refine(...)``) or a
transform is handled through the indexes it wraps. Other kinds (HNSW, whose graph
cannot lose nodes) cannot remove rows: :func:`can_remove` says so and the caller
rebuilds.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["can_remove", "new_numbers", "remove_rows"]


def can_remove(index: faiss.Index) -> bool:
    """Whether :func:`remove_rows` can take rows out of ``index`` (a CPU index)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        return can_remove(inner.base_index) and can_remove(inner.refine_index)
    if isinstance(inner, faiss.IndexPreTransform):
        return can_remove(inner.index)
    return isinstance(inner, (faiss.IndexFlatCodes, faiss.IndexIVF))


def new_numbers(ntotal: int, removed: np.ndarray) -> np.ndarray:
    """``new[old row]``: each row's number once ``removed`` rows are gone (-1 for those)."""
    keep = np.ones(ntotal, dtype=bool)
    keep[removed] = False
    return np.where(keep, np.cumsum(keep) - 1, -1)


def remove_rows(index: faiss.Index, removed: np.ndarray) -> None:
    """Remove faiss rows ``removed`` from ``index`` (a CPU index, see :func:`can_remove`);
    the other rows keep their order and are numbered ``0 .. ntotal-1`` again."""
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    if len(removed) == 0:
        return
    new = new_numbers(int(index.ntotal), removed)
    _remove(index, removed, new)


def _remove(index: faiss.Index, removed: np.ndarray, new: np.ndarray) -> None:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        _remove(inner.base_index, removed, new)
        _remove(inner.refine_index, removed, new)
        inner.ntotal = inner.base_index.ntotal
        return
    if isinstance(inner, faiss.IndexPreTransform):
        _remove(inner.index, removed, new)
        inner.ntotal = inner.index.ntotal
        return
    if isinstance(inner, faiss.IndexIVF):
        inner.set_direct_map_type(faiss.DirectMap.NoMap)  # faiss removes from no other map
        inner.remove_ids(faiss.IDSelectorBatch(removed))
        _renumber_lists(inner, new)
        return
    if not isinstance(inner, faiss.IndexFlatCodes):
        raise ValueError(f"faiss cannot remove rows from a {type(inner).__name__}")
    inner.remove_ids(faiss.IDSelectorBatch(removed))  # closes the gaps in order


def _renumber_lists(ivf: faiss.IndexIVF, new: np.ndarray) -> None:
    """Give the ids stored in ``ivf``'s lists their new numbers (in place)."""
    lists = ivf.invlists
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
            ids[:] = new[ids]
