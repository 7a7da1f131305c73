"""faiss on the GPU: whether to use one, moving indexes there, GPU k-NN and k-means.

Every function falls back to the CPU where faiss has no GPU (or no GPU version of an
index type), so callers never branch on the build of faiss installed.
"""

from __future__ import annotations

import faiss
import numpy as np

from embedkit.errors import InputError
from embedkit.index.tune import is_gpu_index

__all__ = ["GpuHelper", "to_cpu", "to_gpu", "use_gpu"]


def use_gpu(gpu: bool | None) -> bool:
    """``None``: use a GPU when faiss sees one; ``True``: require one; ``False``: CPU."""
    if gpu is False:
        return False
    available = faiss.get_num_gpus() > 0
    if gpu and not available:
        raise InputError("gpu=True but faiss sees no GPU; pass gpu=None/False (or --no-gpu)")
    return available


def to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A GPU clone of ``index``, or None where faiss has no GPU version (HNSW, fast-scan PQ,
    refine stages): those stay on the CPU."""
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return None
    try:
        clone = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):  # "not implemented on GPU" and friends
        return None
    return clone if is_gpu_index(clone) else None


class GpuHelper:
    """Lazily created GPU resources for brute-force kNN and IVF training."""

    def __init__(self) -> None:
        self._res = None

    @property
    def res(self):
        if self._res is None:
            self._res = faiss.StandardGpuResources()
        return self._res

    def knn(self, xq: np.ndarray, xb: np.ndarray, k: int, metric: int):
        return faiss.knn_gpu(self.res, xq, xb, k, metric=metric)

    def clustering_index(self, index: faiss.Index) -> None:
        """Run the k-means of an IVF index's training on the GPU."""
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(flat)


def to_cpu(index: faiss.Index, on_gpu: bool) -> faiss.Index:
    """A CPU copy of a GPU index (the index itself when it is on the CPU already)."""
    return faiss.index_gpu_to_cpu(index) if on_gpu else index
