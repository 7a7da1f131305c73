"""Tuning a built index: raise ``nprobe`` / ``efSearch`` / ``k_factor_rf`` until recall@k
on held-out queries reaches the target (faiss' ``ParameterSpace`` sets them)."""

from __future__ import annotations

import faiss
import numpy as np

__all__ = [
    "K_FACTORS",
    "UNTUNED",
    "ef_ladder",
    "is_gpu_index",
    "ladders",
    "nprobe_ladder",
    "recall_at_k",
    "set_params",
    "tune",
    "untuned_params",
]

GPU_MAX_NPROBE = 2048  # faiss GPU IVF limit
NPROBES = [
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    4096,
    8192,
]
EF_SEARCHES = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048]
K_FACTORS = [1, 2, 4, 8, 16, 32, 64, 128]


def nprobe_ladder(nlist: int) -> list[int]:
    """nprobe values to try for ``nlist`` lists (always ends with ``nlist``: exhaustive)."""
    return [p for p in NPROBES if p < nlist] + [nlist]


def ef_ladder(k: int) -> list[int]:
    """efSearch values to try; efSearch below k makes no sense."""
    return sorted({max(ef, k) for ef in EF_SEARCHES})


def is_gpu_index(index: faiss.Index) -> bool:
    """Whether ``index`` lives on a GPU (a faiss ``GpuIndex``)."""
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k neighbours found (``found`` may hold -1 padding)."""
    if truth.size == 0:
        return 1.0
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum() / truth.size)


def set_params(index: faiss.Index, params: dict[str, float]) -> None:
    """Apply faiss search parameters (``nprobe``, ``efSearch``, ``k_factor_rf``)."""
    if not params:
        return
    space = faiss.GpuParameterSpace() if is_gpu_index(index) else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def ladders(index: faiss.Index, k: int, on_gpu: bool = False) -> list[tuple[str, list[int]]]:
    """Tunable parameters, the primary one (recall grows with it) first."""
    steps: list[tuple[str, list[int]]] = []
    ivf = faiss.try_extract_index_ivf(index)
    cpu = faiss.downcast_index(index)
    if ivf is not None:
        probes = nprobe_ladder(ivf.nlist)
        steps.append(("nprobe", [p for p in probes if p <= GPU_MAX_NPROBE] if on_gpu else probes))
    elif isinstance(cpu, faiss.IndexHNSW):
        steps.append(("efSearch", ef_ladder(k)))
    if isinstance(cpu, faiss.IndexRefine):
        steps.append(("k_factor_rf", K_FACTORS))
    return steps


#: parameters used when recall is not measured (recall_sample=0)
UNTUNED = {"nprobe": 16, "efSearch": 64, "k_factor_rf": 16}


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    target: float,
    on_gpu: bool = False,
) -> tuple[dict[str, float], float]:
    """Raise the search parameters until recall@k >= target; returns (params, recall).

    ``queries`` are held out of the index while tuning (a query already in an HNSW graph
    finds its neighbours through its own links, which would overstate recall).
    """

    def measure(params: dict[str, float]) -> float:
        set_params(index, params)
        return recall_at_k(index.search(queries, truth.shape[1])[1], truth)

    steps = ladders(index, k, on_gpu)
    if not steps:
        return {}, measure({})
    (primary, values), secondary = steps[0], steps[1:]
    fixed = {name: vals[-1] for name, vals in secondary}  # most generous first
    best: tuple[float, dict[str, float]] = (-1.0, {})
    history: list[float] = []
    for value in values:
        params = {primary: value, **fixed}
        recall = measure(params)
        if recall > best[0] + 1e-9:
            best = (recall, params)
        if recall >= target:
            break
        history.append(recall)
        if len(history) >= 4 and history[-1] - history[-4] < 0.002:
            break  # plateau: more probes will not get there
    recall, params = best
    for name, vals in secondary:  # then the cheapest secondary value that still reaches it
        for value in vals[:-1]:
            trial = {**params, name: value}
            got = measure(trial)
            if got >= min(target, recall):
                params, recall = trial, got
                break
    set_params(index, params)
    return params, recall


def untuned_params(index: faiss.Index, k: int) -> dict[str, float]:
    """Generous search parameters for an index whose recall is not measured."""
    return {
        name: min(UNTUNED.get(name, values[-1]), values[-1]) for name, values in ladders(index, k)
    }
