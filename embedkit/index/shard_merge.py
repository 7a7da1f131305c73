"""Merging shards of one trained faiss index: which indexes can be built in shards, and
appending a shard's rows to the merged index under the next row numbers.

A shard is an empty copy of the trained index filled with a contiguous run of the
dataset's rows (row numbers 0..n-1 in the shard). Merged in order, each shard's rows get
the row numbers after the rows already merged, so the merged index is the index one
machine would have built by adding the same rows in the same order: the same inverted
lists in the same order, the same codes. faiss merges an IVF's lists (``merge_from`` with
an id offset) and a flat index's codes; a transform (``PCA``/``OPQ``) or a refine stage
(``RFlat``, ``Refine(...)``) wraps one of those and is merged part by part here.
"""

from __future__ import annotations

import faiss
import numpy as np

from embedkit.errors import InputError

__all__ = ["check_shardable", "from_bytes", "merge_shard", "shardable", "to_bytes"]


def shardable(index: faiss.Index) -> bool:
    """Whether shards of ``index`` can be merged: an IVF or a flat index, alone or under
    transforms and refine stages (not HNSW or other graphs)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        return shardable(inner.index)
    if isinstance(inner, faiss.IndexRefine):
        return shardable(inner.base_index) and shardable(inner.refine_index)
    return isinstance(inner, (faiss.IndexIVF, faiss.IndexFlatCodes))


def check_shardable(index: faiss.Index, factory: str) -> None:
    """A one-line error unless ``index`` can be built in shards."""
    if not shardable(index):
        raise InputError(
            f"{factory} cannot be built in shards (faiss merges IVF and flat indexes only); "
            "use --kind ivf, ivfsq, ivfpq or an IVF factory with --engine ray, or build it "
            "on one machine without --engine ray"
        )


def merge_shard(merged: faiss.Index, shard: faiss.Index) -> None:
    """Append ``shard``'s rows to ``merged`` (both copies of one trained index), numbered
    from ``merged.ntotal``. ``shard`` may be emptied (faiss moves IVF lists)."""
    into, other = faiss.downcast_index(merged), faiss.downcast_index(shard)
    if isinstance(into, faiss.IndexPreTransform):
        merge_shard(into.index, other.index)
    elif isinstance(into, faiss.IndexRefine):
        merge_shard(into.base_index, other.base_index)
        merge_shard(into.refine_index, other.refine_index)
    elif isinstance(into, faiss.IndexIVF):
        into.merge_from(other, into.ntotal)
    else:  # flat codes: appended; faiss numbers them in order itself
        into.merge_from(other, 0)
    # the wrappers' own counts: faiss updates only the index it merged into
    into.ntotal = _inner_total(into)
    merged.ntotal = into.ntotal


def _inner_total(index: faiss.Index) -> int:
    if isinstance(index, faiss.IndexPreTransform):
        return int(faiss.downcast_index(index.index).ntotal)
    if isinstance(index, faiss.IndexRefine):
        return int(faiss.downcast_index(index.base_index).ntotal)
    return int(index.ntotal)


def to_bytes(index: faiss.Index) -> np.ndarray:
    """``index`` serialized (what travels between Ray workers and the driver)."""
    return faiss.serialize_index(index)


def from_bytes(data: np.ndarray) -> faiss.Index:
    """The index :func:`to_bytes` serialized."""
    return faiss.deserialize_index(np.asarray(data, dtype=np.uint8))
