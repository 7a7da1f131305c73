"""FAISS indexes over latent datasets: build (CPU or GPU), tune, save, load.

An index lives beside its latents::

    latents/index/
      index.faiss    the faiss index (always saved as a CPU index)
      ids.parquet    faiss row -> latent id, in the order rows were added
      index.json     metric, kind, factory, search params, recall@k, fingerprint, ...

``index.json`` records the fingerprint of the latents it was built from. When parts are
added, removed or rewritten, :func:`load_index` raises an :class:`InputError` telling the
user to re-run ``embedkit index`` -- or rebuilds with the same settings if ``rebuild=True``.

The ``auto`` rules are in :mod:`embedkit.index_params`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from embedkit.errors import InputError, first_line
from embedkit.files import atomic_path
from embedkit.index_params import (
    MAX_TRAIN_ROWS,
    TRAIN_POINTS_PER_CENTROID,
    UNTUNED,
    IndexChoice,
    choose_index,
    factory_for_kind,
    is_gpu_index,
    ladders,
    parse_memory,
    set_params,
    tune,
)
from embedkit.store import LatentDataset, open_latents
from embedkit.writer import atomic_write_table

__all__ = ["IndexInfo", "LoadedIndex", "build_index", "index_dir", "load_index"]

INDEX_DIR = "index"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
FORMAT_VERSION = 1
METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
TARGET_RECALL = 0.95


@dataclass
class IndexInfo:
    """What ``index.json`` holds: how an index was built and how well it does."""

    metric: str
    kind: str
    requested_kind: str
    factory: str
    reason: str
    params: dict[str, float]
    ntotal: int
    dim: int
    recall: float | None
    k: int
    recall_queries: int
    target_recall: float
    build_seconds: float
    fingerprint: str
    backbone: dict[str, Any]
    memory_budget: int | None = None
    recall_sample: int = 1000
    estimated_bytes: int | None = None
    built_on: str = "cpu"
    embedkit_version: str = ""
    faiss_version: str = field(default_factory=lambda: faiss.__version__)
    created: str = ""
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexInfo:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        recall = "exact" if self.kind == "flat" else _recall_text(self.recall)
        params = ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items()) or "-"
        return (
            f"{self.kind} ({self.factory}, {self.metric}) ntotal={self.ntotal:,} dim={self.dim} "
            f"recall@{self.k}={recall} params={params} built in {self.build_seconds:.1f}s "
            f"on {self.built_on}"
        )


def _recall_text(recall: float | None) -> str:
    return "not measured" if recall is None else f"{recall:.3f}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def index_dir(latents: str | Path | LatentDataset) -> Path:
    """The folder an index of ``latents`` is saved in: ``<latents>/index``."""
    path = latents.path if isinstance(latents, LatentDataset) else Path(latents)
    return path / INDEX_DIR


def _fingerprint(ds: LatentDataset) -> str:
    fp = ds.fingerprint()
    return fp if ds.expression is None else f"{fp}:filtered:{ds.expression}"


# -- GPU ---------------------------------------------------------------------------
def _use_gpu(gpu: bool | None) -> bool:
    """``None``: use a GPU when faiss sees one; ``True``: require one; ``False``: CPU."""
    if gpu is False:
        return False
    available = faiss.get_num_gpus() > 0
    if gpu and not available:
        raise InputError("gpu=True but faiss sees no GPU; pass gpu=None/False (or --no-gpu)")
    return available


def _to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A GPU clone of ``index``, or None where faiss has no GPU version (HNSW, fast-scan PQ,
    refine stages): those stay on the CPU."""
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return None
    try:
        clone = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):  # "not implemented on GPU" and friends
        return None
    return clone if is_gpu_index(clone) else None


class _Gpu:
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


# -- reading -----------------------------------------------------------------------
def _prepare(vectors: np.ndarray, metric: str, what: str, check: bool = True) -> np.ndarray:
    """float32, C-contiguous, finite, L2-normalized for cosine (always a fresh copy)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if check and not np.isfinite(out).all():
        raise InputError(f"{what} hold NaN or inf values; fix or drop those rows and retry")
    if metric == "cosine":
        faiss.normalize_L2(out)
    return out


def _batches(
    ds: LatentDataset, metric: str, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    offset = 0
    for batch in ds.iter_batches(batch_size=batch_size):
        vectors = _prepare(batch.vectors, metric, f"latents in {ds.path}")
        yield offset, batch.ids, vectors
        offset += len(vectors)


def _take_positions(
    positions: np.ndarray, offset: int, vectors: np.ndarray, out: list[np.ndarray]
) -> None:
    lo, hi = np.searchsorted(positions, [offset, offset + len(vectors)])
    if hi > lo:
        out.append(vectors[positions[lo:hi] - offset])


def _bar(progress: bool, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not progress)


# -- recall and tuning ---------------------------------------------------------------
# -- building ------------------------------------------------------------------------
@dataclass
class LoadedIndex:
    """A searchable index and what it maps to.

    Attributes:
        index: the faiss index (on the GPU when one was used, else CPU).
        ids: latent id of each faiss row, as a numpy object array.
        info: the :class:`IndexInfo` (``index.json``).
        dataset: the latents it was built from.
    """

    index: faiss.Index
    ids: np.ndarray
    info: IndexInfo
    dataset: LatentDataset
    on_gpu: bool = False
    path: Path | None = None
    _arrow: dict[str, pa.Array] = field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        return self.info.metric

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, params: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss search of prepared (float32, normalized for cosine) ``queries``."""
        if not params:
            return self.index.search(queries, k)
        set_params(self.index, params)
        try:
            return self.index.search(queries, k)
        finally:
            set_params(self.index, {n: v for n, v in self.info.params.items() if n in params})

    @property
    def id_array(self) -> pa.Array:
        """The ids as a pyarrow ``large_string`` array (cached), in faiss row order."""
        if "id" not in self._arrow:
            self._arrow["id"] = pa.array(self.ids, pa.large_string())
        return self._arrow["id"]

    def rows_of(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """faiss row of each id (vectorized), -1 where the id is not indexed."""
        found = pc.index_in(pa.array(ids, pa.large_string()), value_set=self.id_array)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def columns(self, names: list[str]) -> dict[str, pa.Array]:
        """Carried columns of the latents as pyarrow arrays in faiss row order (cached)."""
        missing = [n for n in names if n not in self._arrow]
        if missing:
            table = self.dataset.to_table(["id", *[n for n in missing if n != "id"]])
            where = pc.index_in(self.id_array, value_set=table.column("id"))
            if where.null_count:
                raise InputError(
                    f"the index of {self.dataset.path} holds ids missing from the latents; "
                    f"re-run `embedkit index {self.dataset.path}`"
                )
            table = table.take(where)
            for name in missing:
                column = table.column(name).combine_chunks()
                if pa.types.is_string(column.type):
                    column = column.cast(pa.large_string())  # what pandas' str dtype holds
                self._arrow[name] = column
        return {n: self._arrow[n] for n in names}


def _resolve_choice(kind: str, n: int, dim: int, budget: int | None, gpu: bool) -> IndexChoice:
    if kind == "auto":
        return choose_index(n, dim, budget, gpu)
    return factory_for_kind(kind, n, dim, budget)


def _new_index(choice: IndexChoice, dim: int, metric: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, choice.factory, METRICS[metric])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise InputError(
            f"unknown index kind {choice.factory!r}: use auto, flat, ivf, hnsw, ivfpq or a "
            f"faiss factory string such as 'IVF256,SQ8' (faiss: {reason})"
        ) from None


def _train_rows(index: faiss.Index, n: int) -> int:
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    wanted = TRAIN_POINTS_PER_CENTROID * ivf.nlist if ivf is not None else 65_536
    return int(min(n, max(wanted, 10_000), MAX_TRAIN_ROWS))


def build_index(
    latents: str | Path | LatentDataset,
    metric: str = "cosine",
    kind: str = "auto",
    memory_budget: int | str | None = None,
    recall_sample: int = 1000,
    k: int = 10,
    gpu: bool | None = None,
    progress: bool = True,
    save: bool | None = None,
    target_recall: float = TARGET_RECALL,
    batch_size: int = 65_536,
) -> LoadedIndex:
    """Build a FAISS index over a latent dataset, measure its recall, and save it.

    Vectors are streamed from the Parquet parts (two passes for trained or approximate
    indexes: a sample pass, then an add pass that also computes exact ground truth for
    ``recall_sample`` query rows). Approximate indexes get ``nprobe``/``efSearch``/
    ``k_factor_rf`` raised until recall@k >= ``target_recall``.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset`.
        metric: ``"cosine"`` (normalize, inner product) or ``"l2"`` (squared L2).
        kind: ``auto``, ``flat``, ``ivf``, ``hnsw``, ``ivfpq`` or any faiss factory string.
        memory_budget: bytes (or ``"2GB"``) the index may use; steers ``auto``/``ivfpq``.
        recall_sample: query rows drawn from the data to measure recall (0: skip).
        k: the k of recall@k.
        gpu: ``None`` uses a GPU when faiss sees one, ``False`` forces CPU.
        progress: show tqdm progress bars.
        save: write ``<latents>/index/``; default: yes unless ``latents`` is a filtered view.
        target_recall: the recall the search parameters are tuned to reach.
        batch_size: rows per streamed batch.

    Example:
        >>> idx = build_index("latents/", metric="cosine", kind="auto")
        >>> idx.info.kind, idx.info.recall, idx.info.params
    """
    start = time.perf_counter()
    ds = open_latents(latents)
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported; use cosine or l2")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    budget = parse_memory(memory_budget)
    if save is None:
        save = ds.expression is None
    elif save and ds.expression is not None:
        raise InputError(
            "a filtered view cannot be saved as the dataset's index; build on the whole "
            "dataset and filter the results, or pass save=False"
        )
    fingerprint = _fingerprint(ds)  # before reading: rows added meanwhile make it stale
    n = len(ds)
    if n == 0:
        raise InputError(f"no rows to index in {ds.path} (empty dataset or filter matched none)")
    use_gpu = _use_gpu(gpu)
    choice = _resolve_choice(kind, n, ds.dim, budget, use_gpu)
    index = _new_index(choice, ds.dim, metric)
    exact = choice.factory == "Flat"
    gpu_helper = _Gpu() if use_gpu else None
    rng = np.random.default_rng(0)

    # recall queries: rows of the data, held out until the parameters are tuned
    n_queries = 0 if exact or n < 2 else min(max(int(recall_sample), 0), max(n // 10, 1))
    query_pos = np.sort(rng.choice(n, n_queries, replace=False)) if n_queries else None
    n_train = _train_rows(index, n)
    train_pos = np.sort(rng.choice(n, n_train, replace=False)) if n_train else None

    work, on_gpu = index, False  # work: the index trained, filled and tuned (maybe on GPU)
    if gpu_helper is not None:
        clone = _to_gpu(index)
        if clone is not None:
            work, on_gpu = clone, True
        elif not index.is_trained:
            gpu_helper.clustering_index(index)  # at least the k-means runs on the GPU

    queries = np.zeros((0, ds.dim), np.float32)
    query_ids = np.array([], dtype=object)
    if n_train or n_queries:  # pass 1: samples for training and for recall queries
        train_parts: list[np.ndarray] = []
        query_parts: list[np.ndarray] = []
        query_id_parts: list[np.ndarray] = []
        with _bar(progress, n, "sample") as bar:
            for offset, ids, vectors in _batches(ds, metric, batch_size):
                if train_pos is not None:
                    _take_positions(train_pos, offset, vectors, train_parts)
                if query_pos is not None:
                    _take_positions(query_pos, offset, vectors, query_parts)
                    _take_positions(query_pos, offset, np.asarray(ids, object), query_id_parts)
                bar.update(len(vectors))
        if query_parts:
            queries = np.concatenate(query_parts)
            query_ids = np.concatenate(query_id_parts)
        if n_train:
            train = np.concatenate(train_parts)
            del train_parts
            if progress:
                tqdm.write(f"training {choice.factory} on {len(train):,} vectors")
            work.train(train)
            del train

    k_eff = min(k, n - len(queries))
    heap = (
        faiss.ResultHeap(len(queries), k_eff, keep_max=metric == "cosine") if len(queries) else None
    )
    id_parts: list[np.ndarray] = []
    added = 0
    with _bar(progress, n, "add") as bar:  # pass 2: add, and exact ground truth for recall
        for offset, ids, vectors in _batches(ds, metric, batch_size):
            bar.update(len(vectors))
            ids = np.asarray(ids, dtype=object)
            if heap is not None:  # hold the query rows back
                lo, hi = np.searchsorted(query_pos, [offset, offset + len(vectors)])
                if hi > lo:
                    keep = np.ones(len(vectors), dtype=bool)
                    keep[query_pos[lo:hi] - offset] = False
                    vectors, ids = vectors[keep], ids[keep]
            if len(vectors) == 0:
                continue
            work.add(vectors)
            id_parts.append(ids)
            if heap is not None:
                kb = min(k_eff, len(vectors))
                if gpu_helper is not None:
                    dist, found = gpu_helper.knn(queries, vectors, kb, METRICS[metric])
                else:
                    dist, found = faiss.knn(queries, vectors, kb, metric=METRICS[metric])
                heap.add_result(dist, found + added)
            added += len(vectors)

    params: dict[str, float] = {}
    recall: float | None = 1.0 if exact else None
    if heap is None and not exact:  # recall not measured: generous defaults
        params = {
            name: min(UNTUNED.get(name, values[-1]), values[-1])
            for name, values in ladders(work, k_eff)
        }
        set_params(work, params)
    if heap is not None:
        heap.finalize()
        params, recall = tune(work, queries, heap.I, k_eff, target_recall, on_gpu)
        if recall < target_recall:
            warnings.warn(
                f"{choice.factory} reaches recall@{k}={recall:.3f} < {target_recall}; "
                "use kind='ivf' or 'hnsw' or a larger memory budget",
                stacklevel=2,
            )
        work.add(queries)  # the held-out rows go in last
        id_parts.append(query_ids)
    ids_all = np.concatenate(id_parts) if id_parts else np.array([], dtype=object)

    if progress and recall is not None:
        tqdm.write(f"recall@{k} = {recall:.3f} with {params or 'exact search'}")

    from embedkit import __version__

    info = IndexInfo(
        metric=metric,
        kind=choice.kind,
        requested_kind=kind,
        factory=choice.factory,
        reason=choice.reason,
        params={name: _num(v) for name, v in params.items()},
        ntotal=int(work.ntotal),
        dim=ds.dim,
        recall=None if recall is None else round(float(recall), 4),
        k=k,
        recall_queries=len(queries) if not exact else 0,
        target_recall=target_recall,
        recall_sample=recall_sample,
        build_seconds=round(time.perf_counter() - start, 3),
        fingerprint=fingerprint,
        backbone=json.loads(ds.backbone.to_json()),
        memory_budget=budget,
        estimated_bytes=choice.estimated_bytes,
        built_on="gpu" if on_gpu else "cpu",
        embedkit_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    loaded = LoadedIndex(index=work, ids=ids_all, info=info, dataset=ds, on_gpu=on_gpu)
    if save:
        loaded.path = _save(loaded)
    return loaded


def _num(value: float) -> float:
    return int(value) if float(value).is_integer() else float(value)


# -- persistence ---------------------------------------------------------------------
def _cpu(index: faiss.Index, on_gpu: bool) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def _save(loaded: LoadedIndex) -> Path:
    folder = index_dir(loaded.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / INFO_FILE
    info_path.unlink(missing_ok=True)  # index.json is written last: it marks a complete index
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(_cpu(loaded.index, loaded.on_gpu), str(tmp))
    atomic_write_table(pa.table({"id": pa.array(loaded.ids, pa.string())}), folder / IDS_FILE)
    with atomic_path(info_path) as tmp:
        tmp.write_text(loaded.info.to_json())
    return folder


def read_info(latents: str | Path | LatentDataset) -> IndexInfo | None:
    """The saved ``index.json`` of ``latents``, or None when no index was built."""
    path = index_dir(latents) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return IndexInfo.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"{path} is damaged ({exc}); re-run `embedkit index {path.parent.parent}`"
        ) from None


def _read_faiss(path: Path, mmap: bool) -> faiss.Index:
    """Read an index; ``mmap`` maps inverted lists (IO_FLAG_MMAP) and, where faiss can,
    flat code arrays (IO_FLAG_MMAP_IFC) read-only instead of copying them into RAM."""
    if not mmap:
        return faiss.read_index(str(path))
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    if ifc:
        try:
            return faiss.read_index(str(path), flags | ifc)
        except RuntimeError:
            pass  # e.g. IVF lists cannot take both mappings: map the lists only
    return faiss.read_index(str(path), flags)


def load_index(
    latents: str | Path | LatentDataset,
    mmap: bool = False,
    rebuild: bool = False,
    gpu: bool | None = None,
    progress: bool = False,
) -> LoadedIndex:
    """Load the index saved in ``<latents>/index/``.

    Args:
        latents: the latent dataset folder (or :class:`LatentDataset`).
        mmap: memory-map the index file read-only instead of reading it into RAM.
        rebuild: if the latents changed since the index was built, rebuild it with the
            same settings instead of raising.
        gpu: ``None`` moves the index to a GPU when one is present (not HNSW).
        progress: progress bars for a rebuild.

    Example:
        >>> idx = load_index("latents/", mmap=True)
        >>> idx.info.recall, idx.ntotal
    """
    ds = open_latents(latents)
    if ds.expression is not None:
        raise InputError("load_index needs the whole dataset, not a filtered view")
    folder = index_dir(ds)
    info = read_info(ds)
    if info is None:
        raise InputError(f"no index in {folder}; build one with `embedkit index {ds.path}`")
    if info.format > FORMAT_VERSION:
        raise InputError(f"{folder} was written by a newer embedkit; upgrade or rebuild it")
    if info.fingerprint != _fingerprint(ds):
        if rebuild:
            return build_index(
                ds,
                metric=info.metric,
                kind=info.requested_kind,
                memory_budget=info.memory_budget,
                recall_sample=info.recall_sample,
                k=info.k,
                gpu=gpu,
                progress=progress,
                target_recall=info.target_recall,
            )
        raise InputError(
            f"the index in {folder} is stale: the latents changed since it was built; "
            f"re-run `embedkit index {ds.path}` (or pass rebuild=True)"
        )
    try:
        index = _read_faiss(folder / INDEX_FILE, mmap)
        ids = pq.read_table(folder / IDS_FILE).column("id").to_numpy(zero_copy_only=False)
    except (RuntimeError, OSError, pa.ArrowInvalid, KeyError) as exc:
        raise InputError(
            f"cannot read the index in {folder} ({first_line(exc)}); "
            f"re-run `embedkit index {ds.path}`"
        ) from None
    if index.ntotal != len(ids) or index.d != ds.dim:
        raise InputError(
            f"the index in {folder} is damaged ({index.ntotal} rows, {len(ids)} ids); "
            f"re-run `embedkit index {ds.path}`"
        )
    set_params(index, info.params)
    on_gpu = False
    if _use_gpu(gpu):
        clone = _to_gpu(index)
        if clone is not None:
            index, on_gpu = clone, True
            set_params(index, info.params)
    return LoadedIndex(index=index, ids=ids, info=info, dataset=ds, on_gpu=on_gpu, path=folder)
