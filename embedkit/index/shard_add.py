"""One shard of a sharded index build, as a worker runs it: read a run of the dataset's
rows straight from its Parquet parts, hold back the recall queries among them, add the
rest to an empty copy of the trained index, and find the queries' exact neighbours among
them (their row numbers in the merged index).

Nothing here knows about Ray: :mod:`embedkit.index.sharded` ships a :class:`ShardTask`
to a worker and merges what comes back, and tests run shards in-process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow.parquet as pq

from embedkit.errors import InputError
from embedkit.index.metric import METRICS, prepare_vectors
from embedkit.index.shard_merge import from_bytes, to_bytes
from embedkit.location import arrow_source, file_stat
from embedkit.store.format import EMBEDDING, vectors_from_column

__all__ = ["Piece", "ShardResult", "ShardTask", "add_shard"]


@dataclass(frozen=True)
class Piece:
    """Rows ``[first, stop)`` of one part file (of ``size`` bytes when planned)."""

    path: str
    size: int
    first: int
    stop: int


@dataclass(frozen=True)
class ShardTask:
    """A contiguous run of the dataset's rows: its pieces in stream order, the stream
    position of its first row, the row number its first added row gets in the merged
    index, and the positions (within the run, sorted) held out as recall queries."""

    number: int
    pieces: tuple[Piece, ...]
    start: int
    first_label: int
    held: np.ndarray
    metric: str
    dim: int

    @property
    def rows(self) -> int:
        return sum(p.stop - p.first for p in self.pieces)


@dataclass
class ShardResult:
    """A filled shard (serialized), its ids in row order, the queries' nearest rows in it
    (``dist``/``labels`` [Q, depth], labels in the merged index; None without queries),
    and how long it took."""

    number: int
    index: np.ndarray
    ids: np.ndarray
    dist: np.ndarray | None
    labels: np.ndarray | None
    seconds: float
    node: str = ""


def _batches(piece: Piece, dim: int, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors)`` of the piece's rows, read by row group."""
    if file_stat(piece.path).st_size != piece.size:
        raise InputError(
            f"{piece.path} changed while the index was built; run `embedkit index` again"
        )
    where, filesystem = arrow_source(piece.path)  # a local path or an object-storage URI
    part = pq.ParquetFile(where, filesystem=filesystem)
    meta, row = part.metadata, 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        lo, hi = max(piece.first, row), min(piece.stop, row + rows)
        if lo < hi:
            table = part.read_row_group(group, columns=["id", EMBEDDING])
            table = table.slice(lo - row, hi - lo)
            for start in range(0, len(table), batch_rows):
                chunk = table.slice(start, batch_rows)
                ids = chunk.column("id").to_numpy(zero_copy_only=False)
                yield ids, vectors_from_column(chunk.column(EMBEDDING), dim)
        row += rows


def add_shard(
    task: ShardTask,
    trained: np.ndarray,
    queries: np.ndarray,
    depth: int,
    batch_rows: int = 65_536,
) -> ShardResult:
    """Fill an empty copy of the ``trained`` (serialized) index with ``task``'s rows but
    its held-out ones, and find each query's ``depth`` nearest rows among those added."""
    began = time.perf_counter()
    index = from_bytes(trained)
    keep_max = task.metric == "cosine"
    heap = faiss.ResultHeap(len(queries), depth, keep_max=keep_max) if len(queries) else None
    id_parts, offset = [], 0
    for piece in task.pieces:
        for ids, raw in _batches(piece, task.dim, batch_rows):
            vectors = prepare_vectors(raw, task.metric, f"latents in {piece.path}")
            keep = _not_held(task.held, offset, len(ids))
            offset += len(ids)
            vectors, ids = vectors[keep], ids[keep]
            if len(vectors) == 0:
                continue
            if heap is not None:
                dist, found = faiss.knn(
                    queries, vectors, min(depth, len(vectors)), metric=METRICS[task.metric]
                )
                heap.add_result(dist, found + (task.first_label + index.ntotal))
            index.add(vectors)
            id_parts.append(ids)
    ids = np.concatenate(id_parts) if id_parts else np.array([], dtype=object)
    dist = labels = None
    if heap is not None:
        heap.finalize()
        dist, labels = heap.D, heap.I
    return ShardResult(task.number, to_bytes(index), ids, dist, labels, time.perf_counter() - began)


def _not_held(held: np.ndarray, offset: int, rows: int) -> np.ndarray:
    """Which of ``rows`` rows from ``offset`` (within the shard) are not held out."""
    lo, hi = np.searchsorted(held, [offset, offset + rows])
    keep = np.ones(rows, dtype=bool)
    keep[held[lo:hi] - offset] = False
    return keep
