"""How :func:`embedkit.build_index` picks an index: pure functions, no I/O, easy to test.

:mod:`embedkit.index.tune` then raises the search parameters until recall is reached.

``auto`` on a CPU build (from 2 MiB of vectors) measures its candidates on a sample
(:mod:`embedkit.index.select`); :func:`candidate_choices` lists them: ``Flat``,
``HNSW32``, ``IVF{nlist},Flat`` (each if it fits the memory budget), ``IVF{nlist},SQ8``
(with ``RFlat`` re-ranking if it fits) and IVF-PQ as below.

The ``auto`` rules, used for GPU builds and when recall is not measured, are adapted from
autofaiss' ``get_optimal_index_keys_v2`` and the faiss wiki "Guidelines to choose an
index" (N rows of dimension D, B = memory budget)::

    N < 20,000                                  -> Flat          exact; brute force is ~ms
    N < 1,000,000, no GPU, HNSW32 fits in B     -> HNSW32        no training
    IVF{nlist},Flat fits in B                   -> IVF{nlist},Flat   big sets or GPU (no GPU HNSW)
    otherwise                                   -> IVF{nlist},PQ{m}x4fs[,refine]  compressed

``nlist`` is 4*sqrt(N) rounded to a power of two, clamped to [16, 65536] and to at most
N/39 (faiss wants >= 39 training points per centroid). ``m`` is D/2 (two dimensions per
4-bit sub-quantizer) rounded down to an even divisor of D. The refine (re-ranking)
stage keeps the best of ``RFlat`` (exact float32), ``Refine(SQfp16)``, ``Refine(SQ8)``
that fits in B; without one m shrinks until the codes fit. Approximate kinds then get
their search parameter raised (``nprobe``, ``efSearch``, ``k_factor_rf``) until
recall@k on a sample reaches the target, 0.95 by default.

Memory estimates (bytes): Flat 4D·N, HNSW32 (4D + 8·32)·N, IVF-Flat (4D + 8)·N + 4D·nlist,
IVF-SQ8 (D + 8 + refine)·N + 4D·nlist with refine 4D or 0, IVF-PQ (m/2 + 8 + refine)·N +
4D·nlist with refine 4D, 2D or D.

The default budget B is half the machine's RAM; for a GPU build it is what the GPUs can
hold (:func:`gpu_memory_budget`: one GPU's usable memory, or an index sharded over several).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from embedkit.errors import InputError

__all__ = [
    "FLAT_MAX_ROWS",
    "HNSW_M",
    "HNSW_MAX_ROWS",
    "KINDS",
    "MAX_TRAIN_ROWS",
    "TRAIN_POINTS_PER_CENTROID",
    "IndexChoice",
    "candidate_choices",
    "choose_index",
    "default_memory_budget",
    "factory_for_kind",
    "gpu_memory_budget",
    "ivf_nlist",
    "parse_memory",
    "pq_m",
    "resized_factory",
    "train_rows",
    "usable_gpu_bytes",
]

FLAT_MAX_ROWS = 20_000
HNSW_MAX_ROWS = 1_000_000
HNSW_M = 32
MIN_NLIST, MAX_NLIST = 16, 65_536
TRAIN_POINTS_PER_CENTROID = 64
MAX_TRAIN_ROWS = 1 << 20
ID_BYTES = 8
KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq", "ivfsq")
#: GPU memory left free: faiss' temporary memory (up to ~1.5 GiB a device), query buffers
GPU_RESERVE = 3 << 29
#: share of the rest an index may take: GPU inverted lists grow in steps, over-allocating
GPU_USABLE = 0.8
#: refine stages for IVF-PQ, best first: (factory suffix, bytes per dimension)
REFINES = (("RFlat", 4), ("Refine(SQfp16)", 2), ("Refine(SQ8)", 1))

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class IndexChoice:
    """A resolved index: ``kind`` (flat/ivf/hnsw/ivfpq/custom), faiss ``factory``, ``reason``."""

    kind: str
    factory: str
    reason: str
    estimated_bytes: int | None = None


def parse_memory(value: int | float | str | None) -> int | None:
    """``"2GB"``, ``"512MiB"``, ``"1.5g"`` or a number of bytes -> bytes (binary units).

    Example:
        >>> parse_memory("2GB")
        2147483648
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"memory budget {value!r} is not a size; use bytes or e.g. '2GB'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise InputError(f"memory budget {value!r} must be positive; use bytes or e.g. '2GB'")
        return int(value)
    match = _MEMORY.match(str(value))
    if not match:
        raise InputError(f"memory budget {value!r} is not a size; use bytes or e.g. '2GB', '512MB'")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise InputError(f"memory budget {value!r} must be positive; use e.g. '2GB'")
    return size


def default_memory_budget() -> int:
    """Half the machine's physical memory (8 GiB where that cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def usable_gpu_bytes(free: int) -> int:
    """Bytes of an index a GPU with ``free`` bytes free can hold (see ``GPU_RESERVE``)."""
    return max(0, int((free - GPU_RESERVE) * GPU_USABLE))


def gpu_memory_budget(free: Sequence[int]) -> int:
    """The largest index GPUs with ``free`` bytes free each can hold: on the roomiest one,
    or split evenly over the k roomiest (k times the k-th largest usable memory).

    Example:
        >>> gpu_memory_budget([(1 << 30) + GPU_RESERVE] * 2) == 2 * int((1 << 30) * GPU_USABLE)
        True
    """
    usable = sorted((usable_gpu_bytes(f) for f in free), reverse=True)
    return max((k * u for k, u in enumerate(usable, start=1)), default=0)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists: 4*sqrt(n) as a power of two, in [16, 65536] and <= n/39."""
    target = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    most = 2 ** int(math.log2(max(n // 39, 1)))
    return int(max(1, min(max(MIN_NLIST, min(target, MAX_NLIST)), most)))


def pq_m(dim: int, most: int | None = None) -> int:
    """PQ sub-quantizers: the largest even divisor of ``dim`` <= dim/2 (or <= ``most``)."""
    limit = max(1, dim // 2 if most is None else min(most, dim))
    for m in range(limit, 0, -1):
        if dim % m == 0 and (m % 2 == 0 or m == 1):
            return m
    return 1


def _bytes(kind: str, n: int, dim: int, nlist: int = 0, m: int = 0, refine: int = 0) -> int:
    if kind == "flat":
        return 4 * dim * n
    if kind == "hnsw":
        return (4 * dim + 8 * HNSW_M) * n
    if kind == "ivf":
        return (4 * dim + ID_BYTES) * n + 4 * dim * nlist
    if kind == "ivfsq":  # 8-bit codes + id + refine codes
        return (dim + ID_BYTES + refine * dim) * n + 4 * dim * nlist
    # ivfpq: 4-bit codes (m/2 bytes) + id + refine codes
    return int((m / 2 + ID_BYTES + refine * dim) * n + 4 * dim * nlist)


def _ivfpq(n: int, dim: int, budget: int | None) -> IndexChoice:
    nlist = ivf_nlist(n)
    m = pq_m(dim)
    for suffix, per_dim in REFINES:
        size = _bytes("ivfpq", n, dim, nlist, m, per_dim)
        if budget is None or size <= budget:
            return IndexChoice(
                "ivfpq",
                f"IVF{nlist},PQ{m}x4fs,{suffix}",
                f"compressed IVF-PQ with {suffix} re-ranking fits the memory budget",
                size,
            )
    while m > 1 and _bytes("ivfpq", n, dim, nlist, m) > budget:
        m = pq_m(dim, m - 1)
    return IndexChoice(
        "ivfpq",
        f"IVF{nlist},PQ{m}x4fs",
        "only PQ codes without re-ranking fit the memory budget; recall may fall short",
        _bytes("ivfpq", n, dim, nlist, m),
    )


def _ivfsq(n: int, dim: int, budget: int | None) -> IndexChoice:
    nlist = ivf_nlist(n)
    size = _bytes("ivfsq", n, dim, nlist, refine=4)
    if budget is None or size <= budget:
        why = "8-bit scalar-quantized IVF with RFlat re-ranking fits the memory budget"
        return IndexChoice("ivfsq", f"IVF{nlist},SQ8,RFlat", why, size)
    why = "8-bit scalar-quantized IVF codes without re-ranking fit the memory budget"
    return IndexChoice("ivfsq", f"IVF{nlist},SQ8", why, _bytes("ivfsq", n, dim, nlist))


def factory_for_kind(kind: str, n: int, dim: int, memory_budget: int | None = None) -> IndexChoice:
    """The faiss factory string for an explicit ``kind`` (not ``auto``) or a factory string."""
    nlist = ivf_nlist(n)
    if kind == "flat":
        return IndexChoice("flat", "Flat", "requested: exact search", _bytes("flat", n, dim))
    if kind == "ivf":
        return IndexChoice(
            "ivf", f"IVF{nlist},Flat", "requested: IVF", _bytes("ivf", n, dim, nlist)
        )
    if kind == "hnsw":
        return IndexChoice("hnsw", f"HNSW{HNSW_M}", "requested: HNSW", _bytes("hnsw", n, dim))
    if kind in ("ivfpq", "ivfsq"):
        choice = (_ivfpq if kind == "ivfpq" else _ivfsq)(n, dim, memory_budget)
        return IndexChoice(
            kind, choice.factory, "requested: " + choice.reason, choice.estimated_bytes
        )
    return IndexChoice("custom", kind, "requested: faiss factory string")


def choose_index(
    n: int, dim: int, memory_budget: int | None = None, gpu: bool = False, sharded: bool = False
) -> IndexChoice:
    """Apply the ``auto`` rules (see the module docstring) to ``n`` rows of dimension ``dim``.

    Args:
        n: number of vectors.
        dim: their dimension.
        memory_budget: bytes the index may use; ``None`` means half the physical memory.
        gpu: whether the index will be built on a GPU (HNSW has no GPU version).
        sharded: whether it will be built in shards (HNSW shards cannot be merged).

    Example:
        >>> choose_index(5_000, 128).factory
        'Flat'
        >>> choose_index(200_000, 128).factory
        'HNSW32'
    """
    budget = default_memory_budget() if memory_budget is None else memory_budget
    if n < FLAT_MAX_ROWS:
        return IndexChoice(
            "flat", "Flat", f"{n:,} rows < {FLAT_MAX_ROWS:,}: exact search", _bytes("flat", n, dim)
        )
    hnsw = _bytes("hnsw", n, dim)
    if not gpu and not sharded and n < HNSW_MAX_ROWS and hnsw <= budget:
        return IndexChoice(
            "hnsw",
            f"HNSW{HNSW_M}",
            f"{n:,} rows < {HNSW_MAX_ROWS:,} on CPU and HNSW fits the memory budget",
            hnsw,
        )
    nlist = ivf_nlist(n)
    ivf = _bytes("ivf", n, dim, nlist)
    if ivf <= budget:
        why = "GPU build (no GPU HNSW)" if gpu else f"{n:,} rows >= {HNSW_MAX_ROWS:,}"
        if sharded and n < HNSW_MAX_ROWS:
            why = "sharded build (HNSW shards cannot be merged)"
        elif n < HNSW_MAX_ROWS and not gpu:
            why = "HNSW does not fit the memory budget"
        return IndexChoice("ivf", f"IVF{nlist},Flat", f"{why}; IVF-Flat fits", ivf)
    return _ivfpq(n, dim, budget)


def candidate_choices(n: int, dim: int, memory_budget: int | None = None) -> list[IndexChoice]:
    """The kinds ``auto`` measures for ``n`` rows: each of Flat, HNSW32, IVF{nlist},Flat
    whose estimate fits the budget, then IVF-SQ8 and IVF-PQ (with the best re-ranking stage
    that fits, else their codes alone).

    Example:
        >>> [c.kind for c in candidate_choices(100_000, 128)]
        ['flat', 'hnsw', 'ivf', 'ivfsq', 'ivfpq']
    """
    budget = default_memory_budget() if memory_budget is None else memory_budget
    nlist = ivf_nlist(n)
    found = [
        IndexChoice("flat", "Flat", "exact search", _bytes("flat", n, dim)),
        IndexChoice("hnsw", f"HNSW{HNSW_M}", "graph", _bytes("hnsw", n, dim)),
        IndexChoice("ivf", f"IVF{nlist},Flat", "inverted lists", _bytes("ivf", n, dim, nlist)),
    ]
    found = [c for c in found if c.estimated_bytes is not None and c.estimated_bytes <= budget]
    sq = _ivfsq(n, dim, budget)
    fits = sq.estimated_bytes is not None and sq.estimated_bytes <= budget
    return [*found, *([sq] if fits else []), _ivfpq(n, dim, budget)]


def resized_factory(factory: str, n: int) -> str:
    """``factory`` for an index of ``n`` rows: the IVF list count follows :func:`ivf_nlist`
    (``IVF4096,Flat`` for 1M rows is ``IVF1024,Flat`` for a 100k-row sample)."""
    return re.sub(r"^IVF\d+", f"IVF{ivf_nlist(n)}", factory)


def train_rows(n: int, nlist: int | None) -> int:
    """Training rows for an index of ``n`` rows: 64 per IVF list (65,536 without lists),
    at least 10,000, at most ``MAX_TRAIN_ROWS`` and ``n``."""
    wanted = TRAIN_POINTS_PER_CENTROID * nlist if nlist else 65_536
    return int(min(n, max(wanted, 10_000), MAX_TRAIN_ROWS))
