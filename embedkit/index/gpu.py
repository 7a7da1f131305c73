"""faiss on the GPU: whether to use one, where an index fits, moving it there, GPU k-NN
and k-means, and the limits of faiss' GPU search.

Every function falls back to the CPU where faiss has no GPU (or no GPU version of an
index type, or no GPU with room for it), so callers never branch on the build of faiss
installed. Each device gets one ``StandardGpuResources``, made on first use and kept.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from embedkit.errors import InputError, first_line
from embedkit.index.choose import gpu_memory_budget, usable_gpu_bytes
from embedkit.index.tune import GPU_MAX_NPROBE, is_gpu_index, set_params

__all__ = [
    "GPU_MAX_K",
    "GPU_SEARCH_MIN_FLOATS",
    "GPU_SEARCH_MIN_QUERIES",
    "GpuHelper",
    "Placement",
    "clear_gpu_resources",
    "default_gpu_budget",
    "free_gpu_memory",
    "gpu_limit",
    "gpu_pays",
    "gpu_placement",
    "gpu_resources",
    "index_bytes",
    "on_device",
    "set_search_params",
    "stays_on_cpu",
    "to_cpu",
    "to_gpu",
    "use_gpu",
]

GPU_MAX_K = 2048  # faiss' GPU k-selection limit (GPU_MAX_SELECTION_K)
#: a search moves a CPU index to the GPU (gpu=None) from this many queries ...
GPU_SEARCH_MIN_QUERIES = 256
#: ... over an index of at least this many floats (N·D): below, copying it costs more
GPU_SEARCH_MIN_FLOATS = 64_000_000

_resources: dict[int, Any] = {}
_resources_lock = threading.Lock()


def use_gpu(gpu: bool | None) -> bool:
    """``None``: use a GPU when faiss sees one; ``True``: require one; ``False``: CPU."""
    if gpu is False:
        return False
    available = faiss.get_num_gpus() > 0
    if gpu and not available:
        raise InputError("gpu=True but faiss sees no GPU; pass gpu=None/False (or --no-gpu)")
    return available


def gpu_resources(device: int = 0) -> Any:
    """The ``StandardGpuResources`` of ``device``: made once (each holds temporary GPU
    memory, streams and cuBLAS handles), then reused by every clone, k-NN and k-means."""
    with _resources_lock:
        if device not in _resources:
            _resources[device] = faiss.StandardGpuResources()
        return _resources[device]


def clear_gpu_resources() -> None:
    """Forget the per-device resources (their memory is freed with the last index using them)."""
    with _resources_lock:
        _resources.clear()


def free_gpu_memory() -> list[int] | None:
    """Free bytes on each GPU faiss sees (``torch.cuda.mem_get_info``), or None when torch
    sees no CUDA device."""
    count = faiss.get_num_gpus()
    if count == 0:
        return []
    import torch  # only on GPU hosts: torch takes seconds to import

    if not torch.cuda.is_available() or torch.cuda.device_count() < count:
        return None
    return [int(torch.cuda.mem_get_info(i)[0]) for i in range(count)]


def default_gpu_budget() -> int | None:
    """The memory budget of a GPU build: what the GPUs can hold (None: not known)."""
    free = free_gpu_memory()
    return None if free is None else gpu_memory_budget(free)


@dataclass(frozen=True)
class Placement:
    """Where an index goes: the GPU ``devices`` (none: it stays on the CPU), split over
    them (``shard``) or whole on one; ``reason`` says why."""

    devices: tuple[int, ...]
    shard: bool
    reason: str


def gpu_placement(need: int, free: Sequence[int] | None, can_shard: bool = True) -> Placement:
    """Where an index of ``need`` bytes fits, given the free bytes of each GPU (None: not
    known; then GPU 0 is tried): whole on the roomiest GPU, else (``can_shard``) sharded
    evenly over the fewest roomiest GPUs that hold it, else the CPU. Accepts every
    ``need`` up to :func:`~embedkit.index.choose.gpu_memory_budget` of ``free``."""
    if free is None:
        return Placement((0,), False, "GPU memory unknown (torch sees no CUDA): GPU 0")
    order = sorted(range(len(free)), key=lambda i: -free[i])
    usable = [usable_gpu_bytes(free[i]) for i in order]
    most = len(order) if can_shard else min(len(order), 1)
    for k in range(1, most + 1):
        if need <= k * usable[k - 1]:
            devices = tuple(sorted(order[:k]))
            how = "fits one GPU" if k == 1 else f"sharded over {k} GPUs"
            return Placement(devices, k > 1, f"~{_gib(need)} {how}")
    room = ", ".join(_gib(f) for f in free) or "none"
    whole = "" if can_shard else " whole"
    return Placement((), False, f"the index (~{_gib(need)}) fits no GPU{whole} (free: {room})")


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def index_bytes(index: faiss.Index) -> int:
    """Rough bytes ``index`` takes on a GPU: codes and ids of an IVF's lists plus its
    centroids, else float32 vectors."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return int(index.ntotal * (ivf.code_size + 8) + 4 * index.d * ivf.nlist)
    return int(4 * index.d * index.ntotal)


def on_device(index: faiss.Index) -> bool:
    """Whether ``index`` lives on GPUs: a ``GpuIndex``, or replicas or shards of them."""
    return is_gpu_index(index)


def set_search_params(index: faiss.Index, params: dict[str, float]) -> None:
    """:func:`~embedkit.index.tune.set_params` (``GpuParameterSpace`` for GPU indexes,
    their shards and replicas included)."""
    set_params(index, params)


def to_gpu(index: faiss.Index, need: int | None = None) -> faiss.Index | None:
    """A GPU clone of ``index`` (of ``need`` bytes; default :func:`index_bytes`) where one
    fits (:func:`gpu_placement`), or None: no room (a warning says so) or no GPU version
    of the index type (HNSW, fast-scan PQ, refine stages), which stay on the CPU."""
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return None
    # faiss shards a Flat index with successive ids, which takes one add() only: an empty
    # one (a build adds batch by batch) goes on one GPU or stays on the CPU
    can_shard = index.ntotal > 0 or faiss.try_extract_index_ivf(index) is not None
    need = index_bytes(index) if need is None else need
    place = gpu_placement(need, free_gpu_memory(), can_shard)
    if not place.devices:
        warnings.warn(f"{place.reason}; it stays on the CPU", stacklevel=2)
        return None
    options = faiss.GpuMultipleClonerOptions()
    options.shard = place.shard
    try:
        if len(place.devices) == 1:
            device = place.devices[0]
            clone = faiss.index_cpu_to_gpu(gpu_resources(device), device, index, options)
        else:
            resources = [gpu_resources(d) for d in place.devices]
            clone = faiss.index_cpu_to_gpu_multiple_py(resources, index, options, place.devices)
    except (RuntimeError, AttributeError) as exc:
        if not any(word in str(exc) for word in ("not implemented", "not supported")):
            warnings.warn(f"no GPU copy ({first_line(exc)}); it stays on the CPU", stacklevel=2)
        return None
    return clone if on_device(clone) else None


def to_cpu(index: faiss.Index, on_gpu: bool) -> faiss.Index:
    """A CPU copy of a GPU index (the index itself when it is on the CPU already)."""
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def gpu_pays(n_queries: int, ntotal: int, dim: int) -> bool:
    """Whether a search is worth moving a CPU index to the GPU for: many queries
    (``GPU_SEARCH_MIN_QUERIES``) over a large index (``GPU_SEARCH_MIN_FLOATS``)."""
    return n_queries >= GPU_SEARCH_MIN_QUERIES and ntotal * dim >= GPU_SEARCH_MIN_FLOATS


def stays_on_cpu(n_queries: int, ntotal: int, dim: int) -> str | None:
    """Why a search is not worth a GPU copy of its index (None: :func:`gpu_pays`)."""
    if gpu_pays(n_queries, ntotal, dim):
        return None
    queries = "1 query" if n_queries == 1 else f"{n_queries:,} queries"
    return (
        f"{queries} over {ntotal:,}x{dim}: a GPU copy pays from "
        f"{GPU_SEARCH_MIN_QUERIES} queries over {GPU_SEARCH_MIN_FLOATS:,} floats"
    )


def gpu_limit(k: int, params: dict[str, float]) -> str | None:
    """Why faiss cannot search for ``k`` neighbours with ``params`` on a GPU, or None."""
    if k > GPU_MAX_K:
        return f"k={k} > {GPU_MAX_K}, the most faiss finds on a GPU"
    nprobe = params.get("nprobe", 0)
    if nprobe > GPU_MAX_NPROBE:
        return f"nprobe={int(nprobe)} > {GPU_MAX_NPROBE}, the most faiss probes on a GPU"
    return None


class GpuHelper:
    """GPU brute-force k-NN and IVF training for a build (on the resources of ``device``)."""

    def __init__(self, device: int = 0) -> None:
        self.device = device

    @property
    def res(self) -> Any:
        return gpu_resources(self.device)

    def knn(self, xq: np.ndarray, xb: np.ndarray, k: int, metric: int):
        return faiss.knn_gpu(self.res, xq, xb, k, metric=metric)

    def train(self, index: faiss.Index, x: np.ndarray) -> None:
        """``index.train(x)``, with the k-means of an untrained CPU IVF index on the GPU."""
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None or ivf.is_trained or on_device(index):
            index.train(x)
            return
        flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
        try:
            clustering = faiss.index_cpu_to_gpu(self.res, self.device, flat)
        except (RuntimeError, AttributeError) as exc:
            warnings.warn(f"k-means on the CPU ({first_line(exc)})", stacklevel=2)
            index.train(x)
            return
        # faiss keeps only a raw pointer to the clustering index: `clustering` owns it,
        # so it must outlive train(); the pointer is cleared before `clustering` goes
        ivf.clustering_index = clustering
        try:
            index.train(x)
        finally:
            ivf.clustering_index = None
