"""Groups from links: union-find over the rows that have a near-duplicate, vectorized with
numpy (each round links every pair's two roots, then pointer-jumps), and a representative
per group."""

from __future__ import annotations

import numpy as np

__all__ = ["Groups", "link_groups"]


class Groups:
    """Connected groups of the nodes ``0 .. n-1`` of some links.

    Attributes:
        group: [n] the group of each node (0: the largest group).
        representative: [n] the node representing each node's group: its most linked
            member (the lowest node on a tie).
    """

    def __init__(self, group: np.ndarray, representative: np.ndarray):
        self.group = group
        self.representative = representative


def find_roots(parent: np.ndarray) -> np.ndarray:
    """Every node's root, by pointer jumping (``parent`` is changed to point at roots)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent[:] = grand


def union_all(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The root of each of ``n`` nodes once every link ``a[i] - b[i]`` is joined; a root is
    the lowest node of its group."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        roots = find_roots(parent)
        ra, rb = roots[a], roots[b]
        apart = ra != rb
        if not apart.any():
            return roots
        low = np.minimum(ra[apart], rb[apart])
        high = np.maximum(ra[apart], rb[apart])
        np.minimum.at(parent, high, low)  # a root takes the lowest root it is linked to


def link_groups(a: np.ndarray, b: np.ndarray, n: int) -> Groups:
    """Groups of ``n`` nodes joined by links ``a - b``, numbered largest first (then by
    their lowest node); nodes without a link are groups of one."""
    if n == 0:
        return Groups(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    roots = union_all(a, b, n)
    degree = np.bincount(np.concatenate([a, b]), minlength=n)
    uniq, first_seen, inverse, sizes = np.unique(
        roots, return_index=True, return_inverse=True, return_counts=True
    )
    rank = np.lexsort((first_seen, -sizes))  # largest first, ties by lowest node
    number = np.empty(len(uniq), dtype=np.int64)
    number[rank] = np.arange(len(uniq))
    group = number[inverse]
    by = np.lexsort((np.arange(n), -degree, group))  # per group: most linked, then lowest
    starts = np.flatnonzero(np.r_[True, group[by][1:] != group[by][:-1]])
    leader = np.empty(len(uniq), dtype=np.int64)
    leader[group[by][starts]] = by[starts]
    return Groups(group, leader[group])
