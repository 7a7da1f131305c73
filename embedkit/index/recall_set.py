"""The recall queries an index keeps (``recall.npz``): rows of the latents held out when
the index was built, and the exact nearest *other* rows of each, kept up to date as rows
are added and removed, so an incremental update can re-measure recall without reading
the whole dataset again.

The queries are rows of the index, so they are searched with one more neighbour and
their own row dropped (:func:`without_self`); an inverted-list index probes the same
lists whether or not the query row is in them, so this measures what a fresh query gets.

Each query keeps ``kk`` exact neighbours (faiss rows, best first) and a ``depth``: how
many of them are certain. Added rows are merged in exactly (their distances to every
query are computed); a removed row leaves a gap that nothing can fill without a full scan,
so the query's certain depth shrinks by one. A query is used for recall@k while its depth
is at least k.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedkit.files import atomic_path
from embedkit.index.metric import METRICS, prepare_vectors
from embedkit.index.recall import Truth
from embedkit.index.select import stream_batches
from embedkit.index.tune import Search
from embedkit.store.dataset import LatentDataset

__all__ = [
    "TRUTH_DEPTH",
    "RecallSet",
    "drawn_recall_set",
    "read_recall_set",
    "without_self",
    "write_recall_set",
]

#: exact neighbours kept per recall query, as a multiple of k: recall@(10·k) is what a
#: filter keeping a tenth of the rows needs (see embedkit.index.filtered)
TRUTH_DEPTH = 10

#: ``knn(queries, vectors, k) -> (distances, positions in vectors)``
Knn = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class RecallSet:
    """Recall queries (prepared vectors), their faiss rows, and their exact neighbours."""

    queries: np.ndarray  # [Q, D] float32
    labels: np.ndarray  # [Q] each query's own faiss row
    ids: np.ndarray  # [Q, kk] faiss rows of the nearest other rows, best first (-1: none)
    dist: np.ndarray  # [Q, kk] their exact distances
    depth: np.ndarray  # [Q] leading columns that are certain
    similarity: bool  # larger distances are closer (inner product)

    def __len__(self) -> int:
        return len(self.labels)

    def usable(self, depth: int) -> int:
        """How many queries know their nearest ``depth`` rows for certain."""
        return int((self.depth >= depth).sum())

    @classmethod
    def from_build(
        cls, queries: np.ndarray, labels: np.ndarray, truth: Truth, knn: Knn
    ) -> RecallSet:
        """The set of a fresh build: ``truth`` holds the queries' neighbours among the other
        rows (computed while the queries were held out); their neighbours among each other
        are merged in here, each query's own row left out."""
        depth = np.full(len(labels), truth.ids.shape[1], dtype=np.int64)
        base = cls(queries, labels, truth.ids, truth.dist, depth, truth.similarity)
        if len(queries) < 2:
            return base
        dist, pos = knn(queries, queries, min(truth.ids.shape[1] + 1, len(queries)))
        own = pos == np.arange(len(queries))[:, None]
        rows = np.where(own | (pos < 0), -1, labels[np.maximum(pos, 0)])
        return base.merged(dist, rows)

    def truth(self, k: int, depth: int | None = None) -> tuple[np.ndarray, Truth]:
        """The queries whose certain depth reaches ``depth`` (default ``k``) and their
        :class:`Truth` at k (every kept column)."""
        usable = np.flatnonzero(self.depth >= (depth or k))
        queries = self.queries[usable]
        truth = Truth.from_knn(queries, self.dist[usable], self.ids[usable], k, self.similarity)
        return usable, truth

    def merged(self, dist: np.ndarray, rows: np.ndarray) -> RecallSet:
        """The set once candidate rows (``rows``/``dist`` [Q, m], -1: none) joined the
        index: each query keeps its best ``kk``."""
        all_d = np.concatenate([self.dist, dist], axis=1)
        all_i = np.concatenate([self.ids, rows], axis=1)
        key = np.where(all_i < 0, np.inf, -all_d if self.similarity else all_d)
        order = np.argsort(key, axis=1, kind="stable")[:, : self.ids.shape[1]]
        ids = np.take_along_axis(all_i, order, axis=1)
        dist = np.take_along_axis(all_d, order, axis=1)
        return RecallSet(self.queries, self.labels, ids, dist, self.depth, self.similarity)

    def relabelled(self, new_of_old: np.ndarray) -> RecallSet:
        """The set after rows left the index: ``new_of_old[old faiss row]`` is the row's
        new number (-1: removed). Queries removed go; removed neighbours leave gaps."""
        alive = new_of_old[self.labels] >= 0
        ids = np.where(self.ids >= 0, new_of_old[np.maximum(self.ids, 0)], -1)[alive]
        gone = (self.ids[alive] >= 0) & (ids < 0)
        depth = self.depth[alive]
        within = np.arange(ids.shape[1])[None, :] < depth[:, None]
        depth = depth - (gone & within).sum(axis=1)
        order = np.argsort(ids < 0, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)
        dist = np.take_along_axis(self.dist[alive], order, axis=1)
        return RecallSet(
            self.queries[alive], new_of_old[self.labels[alive]], ids, dist, depth,
            self.similarity,
        )  # fmt: skip

    def with_rows(self, vectors: np.ndarray, first_row: int, knn: Knn) -> RecallSet:
        """Merge rows added to the index at faiss rows ``first_row, first_row + 1, ...``."""
        if len(self) == 0 or len(vectors) == 0:
            return self
        dist, pos = knn(self.queries, vectors, min(self.ids.shape[1], len(vectors)))
        return self.merged(dist, np.where(pos < 0, -1, pos + first_row))


def drawn_recall_set(
    ds: LatentDataset, ids: np.ndarray, metric: str, count: int, kk: int, batch_size: int
) -> RecallSet:
    """A new set: ``count`` rows of ``ds`` drawn at random (seeded), indexed under the
    faiss rows ``ids`` gives them, with their exact ``kk`` nearest other rows found in one
    streamed pass over the dataset (when removed rows left the kept set too thin)."""
    stored = ds.to_table(["id"]).column("id")
    rows = pc.index_in(stored, value_set=pa.array(ids, pa.string())).fill_null(-1).to_numpy()
    indexed = np.flatnonzero(rows >= 0)
    rng = np.random.default_rng(len(ids))
    picked = np.sort(rng.choice(indexed, min(count, len(indexed)), replace=False))
    query_ids = stored.take(pa.array(picked)).to_pylist()
    queries = prepare_vectors(ds.vectors_of(query_ids), metric, "latents")
    labels = rows[picked].astype(np.int64)
    similarity = metric == "cosine"
    kk = min(kk, len(indexed) - 1)
    heap = faiss.ResultHeap(len(queries), kk + 1, keep_max=similarity)
    for offset, _, vectors in stream_batches(ds, metric, batch_size):
        batch_rows = rows[offset : offset + len(vectors)]
        dist, pos = faiss.knn(queries, vectors, min(kk + 1, len(vectors)), metric=METRICS[metric])
        heap.add_result(dist, np.where(pos < 0, -1, batch_rows[np.maximum(pos, 0)]))
    heap.finalize()
    own = labels[:, None] == heap.I
    order = np.argsort(own, axis=1, kind="stable")[:, :kk]  # the query's own row goes last
    found = np.take_along_axis(heap.I, order, axis=1)
    dist = np.take_along_axis(heap.D, order, axis=1)
    depth = np.full(len(labels), kk, dtype=np.int64)
    return RecallSet(queries, labels, found, dist, depth, similarity)


def without_self(labels: np.ndarray) -> Search:
    """A search of queries that are rows of the index: one neighbour more, then each
    query's own row (``labels``) dropped (the last one when the search missed it)."""

    def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, found = index.search(queries, k + 1)
        drop = found == labels[:, None]
        drop[:, -1] |= ~drop.any(axis=1)
        keep = ~drop
        return dist[keep].reshape(len(queries), k), found[keep].reshape(len(queries), k)

    return search


def write_recall_set(recall: RecallSet, path: Path) -> None:
    """Save ``recall`` to ``path`` (``.npz``, atomically)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle, queries=recall.queries, labels=recall.labels, ids=recall.ids,
            dist=recall.dist, depth=recall.depth, similarity=np.bool_(recall.similarity),
        )  # fmt: skip


def read_recall_set(path: str | os.PathLike) -> RecallSet:
    """The set saved at ``path`` (no pickles are read)."""
    with np.load(path, allow_pickle=False) as data:
        return RecallSet(
            data["queries"], data["labels"], data["ids"], data["dist"], data["depth"],
            bool(data["similarity"]),
        )  # fmt: skip
