"""Recall of an approximate index against exact distances: the exact neighbours of some
queries (:class:`Truth`), each query's recall@k, and the lower confidence bound the
recall promise is made on.

A found neighbour counts as a hit when its exact distance is as good as the k-th true
distance (to float precision), so duplicates and ties are never misses. The target must
hold for the *lower confidence bound* of recall@k (mean per-query recall minus
``RECALL_Z`` standard errors), not only for the sample mean, so the promise survives the
sampling error of the queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RECALL_Z",
    "TIE_RTOL",
    "Truth",
    "recall_at_k",
    "recall_lower_bound",
    "recall_per_query",
]

#: standard errors between the mean recall and the bound that must reach the target
#: (2.0: ~97.7 % one-sided confidence under the normal approximation)
RECALL_Z = 2.0
#: relative tolerance under which a distance equals the k-th true distance (a tie)
TIE_RTOL = 1e-5


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k neighbours found, matched by id (``found`` may hold -1
    padding). Ties and duplicates count as misses here; :func:`recall_per_query` does not."""
    if truth.size == 0:
        return 1.0
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum() / truth.size)


@dataclass
class Truth:
    """The exact nearest neighbours of recall queries, best first.

    ``ids`` [nq, kk] (-1 padding) and ``dist`` [nq, kk] hold kk >= k columns so that ties
    just past the k-th are known; ``scale`` [nq] (|k-th distance| + |query|^2) sets the
    tolerance of a tie; ``similarity``: larger distances are closer (inner product).
    """

    ids: np.ndarray
    dist: np.ndarray
    k: int
    similarity: bool
    scale: np.ndarray

    @classmethod
    def from_knn(
        cls, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int, similarity: bool
    ) -> Truth:
        k = max(1, min(k, dist.shape[1]))
        norms = np.einsum("ij,ij->i", queries, queries) if len(queries) else np.zeros(0)
        scale = np.abs(dist[:, k - 1]) + norms if len(dist) else np.zeros(0)
        return cls(np.asarray(ids, np.int64), np.asarray(dist, np.float32), k, similarity, scale)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kth(self) -> np.ndarray:
        """The k-th true distance of each query."""
        return self.dist[:, self.k - 1]

    def subset(self, rows: np.ndarray) -> Truth:
        return Truth(self.ids[rows], self.dist[rows], self.k, self.similarity, self.scale[rows])

    def merged(self, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray) -> Truth:
        """The truth once more candidates (``dist``/``ids`` [nq, m]) joined the base."""
        all_d = np.concatenate([self.dist, dist], axis=1)
        all_i = np.concatenate([self.ids, ids], axis=1)
        key = np.where(all_i < 0, np.inf, -all_d if self.similarity else all_d)
        order = np.argsort(key, axis=1, kind="stable")[:, : self.ids.shape[1]]
        take = np.take_along_axis
        return Truth.from_knn(
            queries, take(all_d, order, 1), take(all_i, order, 1), self.k, self.similarity
        )

    def is_hit(self, dist: np.ndarray) -> np.ndarray:
        """Whether exact distances [nq, m] are as close as the k-th true one (ties count)."""
        tol = (TIE_RTOL * self.scale + 1e-30)[:, None]
        kth = self.kth[:, None]
        return dist >= kth - tol if self.similarity else dist <= kth + tol


def recall_per_query(
    found: np.ndarray, truth: Truth, found_dist: np.ndarray | None = None
) -> np.ndarray:
    """Recall@k of each query: the share of its k slots filled by a true neighbour.

    A found row is a hit when its exact distance is within a tie of the k-th true
    distance: from ``found_dist`` when the index returns exact distances, else from the
    truth's own kk columns (an id it does not hold is a miss)."""
    if len(truth) == 0:
        return np.ones(0)
    k = truth.k
    found = found[:, :k]
    valid = found >= 0
    match = (found[:, :, None] == truth.ids[:, None, :]) & valid[:, :, None]
    fill = -np.inf if truth.similarity else np.inf
    if found_dist is not None:
        dist = np.where(valid, found_dist[:, :k], fill)
    else:
        known = np.where(match, truth.dist[:, None, :], fill)
        dist = known.max(axis=2) if truth.similarity else known.min(axis=2)
    hits = (match[:, :, :k].any(axis=2) | truth.is_hit(dist)) & valid
    return np.minimum(hits.sum(axis=1), k) / k


def recall_lower_bound(per_query: np.ndarray, z: float = RECALL_Z) -> float:
    """Mean recall minus ``z`` standard errors of the mean (per-query recalls are the
    independent samples; the k slots of one query are not)."""
    n = len(per_query)
    if n == 0:
        return 1.0
    spread = float(per_query.std(ddof=1)) if n > 1 else 1.0
    return float(per_query.mean() - z * spread / math.sqrt(n))
