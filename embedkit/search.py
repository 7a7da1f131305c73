"""Nearest-neighbour search over latent datasets: by id, by vector, or by image.

Results are one pandas DataFrame, one row per (query, neighbour)::

    query | rank | id | score (cosine) or distance (l2) | <carried columns of the neighbour>

* ``score`` is the cosine similarity (higher is closer) when the metric is cosine;
  ``distance`` is the squared L2 distance (lower is closer) when it is l2.
* ``query`` is the query id, the query's row number for ``vectors=``, or the image path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from embedkit.errors import InputError
from embedkit.index import (
    METRICS,
    LoadedIndex,
    _fingerprint,
    _prepare,
    build_index,
    index_dir,
    load_index,
    read_info,
)
from embedkit.store import (
    LatentDataset,
    missing_ids_message,
    open_latents,
)

__all__ = ["clear_index_cache", "load_vector_file", "neighbors"]

RESULT_COLUMNS = ("query", "rank", "id", "score", "distance")
_CACHE_SIZE = 4
_cache: OrderedDict[tuple, tuple[str, LoadedIndex]] = OrderedDict()
IMAGE_BATCH = 32


def clear_index_cache() -> None:
    """Forget indexes kept in memory between :func:`neighbors` calls."""
    _cache.clear()


def _cached(key: tuple, fingerprint: str, make) -> LoadedIndex:
    hit = _cache.get(key)
    if hit is not None and hit[0] == fingerprint:
        _cache.move_to_end(key)
        return hit[1]
    loaded = make()
    _cache[key] = (fingerprint, loaded)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return loaded


def _check_metric(metric: str | None) -> None:
    if metric is not None and metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported; use cosine or l2")


def _resolve_index(
    ds: LatentDataset,
    index: LoadedIndex | Literal["exact"] | None,
    metric: str | None,
    rebuild: bool,
) -> LoadedIndex:
    """The given index, the saved one (cached), or an exact in-memory Flat index (cached)."""
    _check_metric(metric)
    if isinstance(index, LoadedIndex):
        if metric is not None and metric != index.metric:
            raise InputError(
                f"the given index uses metric {index.metric} but metric={metric!r} was "
                f"requested; build one with metric={metric!r} or omit metric"
            )
        if index.info.dim != ds.dim:
            raise InputError(f"the given index has dim {index.info.dim}, the latents {ds.dim}")
        return index
    if index not in (None, "exact"):
        raise InputError(f"index={index!r} is not a LoadedIndex, 'exact' or None")
    root = str(ds.path.resolve())
    fingerprint = _fingerprint(ds)
    info = read_info(ds) if index is None and ds.expression is None else None
    if info is not None:
        if metric is not None and metric != info.metric:
            raise InputError(
                f"the index in {index_dir(ds)} uses metric {info.metric} but metric={metric!r} "
                f"was requested; re-run `embedkit index {ds.path} --metric {metric}` or omit "
                "--metric"
            )
        stamp = (index_dir(ds) / "index.json").stat().st_mtime_ns
        key = (root, "saved", stamp)
        if rebuild or info.fingerprint == fingerprint:
            return _cached(key, fingerprint, lambda: load_index(ds, rebuild=rebuild))
        load_index(ds)  # raises the one-line "stale index" error
    metric = metric or "cosine"
    key = (root, str(ds.expression), "exact", metric)
    return _cached(
        key,
        fingerprint,
        lambda: build_index(ds, metric=metric, kind="flat", progress=False, save=False),
    )


# -- queries ---------------------------------------------------------------------------
def _as_list(value: Any) -> list:
    if isinstance(value, (str, Path)) or not isinstance(value, Sequence | np.ndarray | pd.Series):
        return [value]
    return list(value)


def _query_vectors(vectors: Any, dim: int) -> np.ndarray:
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"query vectors are not numeric ({exc}); pass a [D] or [N, D] array"
        ) from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise InputError(
            f"query vectors have shape {np.shape(vectors)}; pass one [{dim}] or [N, {dim}] array"
        )
    if array.shape[1] != dim:
        raise InputError(
            f"query vectors have dim {array.shape[1]} but the latents have dim {dim}; "
            "encode them with the same backbone"
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise InputError(
            f"query vector {int(np.flatnonzero(bad)[0])} holds NaN or inf values; "
            "pass finite vectors"
        )
    return array


def load_vector_file(path: str | Path) -> np.ndarray:
    """Query vectors from a ``.npy`` file (``[D]`` or ``[N, D]``), for the CLI."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"vector file {path} does not exist; pass a .npy file") from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read {path} as a .npy array ({exc}); save it with numpy.save"
        ) from None


def _image_vectors(ds: LatentDataset, images: list) -> tuple[np.ndarray, list]:
    """Encode image files (or PIL images) with the backbone recorded in the latents."""
    from PIL import Image, UnidentifiedImageError

    from embedkit.registry import load_backbone

    pil: list[Image.Image] = []
    labels: list = []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            pil.append(item.convert("RGB"))
            labels.append(i)
            continue
        try:
            with Image.open(item) as opened:
                pil.append(opened.convert("RGB"))
        except (FileNotFoundError, IsADirectoryError):
            raise InputError(f"image {item} does not exist; pass an existing image file") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(
                f"cannot open image {item} ({type(exc).__name__}); pass a PNG/JPEG/... file"
            ) from None
        labels.append(str(item))
    backbone = load_backbone(ds.backbone)
    parts = [
        backbone.encode_images(pil[i : i + IMAGE_BATCH]).numpy()
        for i in range(0, len(pil), IMAGE_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32), labels


# -- the API -------------------------------------------------------------------------------
def neighbors(
    latents: str | Path | LatentDataset,
    ids: str | Sequence[str] | None = None,
    vectors: np.ndarray | Sequence[float] | None = None,
    images: str | Path | Sequence[str | Path] | Any | None = None,
    k: int = 10,
    exclude_self: bool = True,
    metric: str | None = None,
    index: LoadedIndex | Literal["exact"] | None = None,
    nprobe: int | None = None,
    columns: Sequence[str] | None = None,
    rebuild: bool = False,
) -> pd.DataFrame:
    """The k nearest neighbours of latent ids, vectors or images, as a DataFrame.

    Give exactly one of ``ids``, ``vectors`` or ``images``. All queries go to faiss in
    one batched search; neighbour metadata is looked up vectorized.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset` (a filtered view
            searches only its rows, exactly).
        ids: one id or several; their stored vectors are the queries.
        vectors: one ``[D]`` vector or ``[N, D]`` vectors.
        images: image path(s) or PIL image(s), encoded with the backbone that made the latents.
        k: neighbours per query.
        exclude_self: for ``ids`` queries, drop the query row itself from its results.
        metric: ``cosine`` or ``l2``; default: the saved index's metric, else cosine.
            Asking for another metric than the saved index's is an error.
        index: a :class:`LoadedIndex` from :func:`build_index`/:func:`load_index`,
            ``"exact"`` for brute force, or ``None``: the saved index if there is one,
            else exact search (indexes are cached between calls).
        nprobe: override the tuned ``nprobe`` of an IVF index for this call.
        columns: carried columns to return for each neighbour (default: all of them).
        rebuild: rebuild a stale saved index instead of raising.

    Returns:
        Columns ``query, rank, id`` then ``score`` (cosine similarity) for cosine or
        ``distance`` (squared L2) for l2, then the carried columns; ``n_queries * k`` rows
        (fewer only when an approximate index finds fewer than k).

    Example:
        >>> neighbors("latents/", ids=["img_001"], k=5)
        >>> neighbors("latents/", images="cat.jpg", k=10, columns=["source", "label"])
    """
    given = [
        name
        for name, v in (("ids", ids), ("vectors", vectors), ("images", images))
        if v is not None
    ]
    if len(given) != 1:
        raise InputError(
            "pass exactly one of ids=, vectors= or images= "
            f"({'none' if not given else ' and '.join(given)} given)"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    ds = open_latents(latents)
    loaded = _resolve_index(ds, index, metric, rebuild)
    metric = loaded.metric

    wanted = _carried(ds, columns)
    self_rows = None
    if ids is not None:
        query_ids = [str(i) for i in _as_list(ids)]
        if not query_ids:
            raise InputError("ids= is empty; pass at least one id")
        self_rows = loaded.rows_of(np.asarray(query_ids, dtype=object))
        if (self_rows < 0).any():
            absent = [query_ids[i] for i in np.flatnonzero(self_rows < 0)]
            raise InputError(missing_ids_message(absent, ds.path))
        raw = ds.vectors_of(query_ids)
        labels: Any = query_ids
        if not exclude_self:
            self_rows = None
    elif vectors is not None:
        raw = _query_vectors(vectors, ds.dim)
        labels = np.arange(len(raw))
    else:
        items = _as_list(images)
        if not items:
            raise InputError("images= is empty; pass at least one image path")
        raw, image_labels = _image_vectors(ds, items)
        labels = image_labels
    queries = _prepare(raw, metric, "query vectors", check=vectors is None)
    if ds.normalized and metric == "l2" and images is not None:
        import faiss

        faiss.normalize_L2(queries)  # image queries must look like the stored latents

    params = _nprobe_params(loaded, nprobe)
    extra = 1 if self_rows is not None else 0
    kk = min(k + extra, loaded.ntotal)
    dist, found = loaded.search(queries, kk, params)
    if self_rows is not None:
        drop = (found == self_rows[:, None]) | (found < 0)
        order = np.argsort(drop, axis=1, kind="stable")
        found = np.take_along_axis(found, order, axis=1)[:, :k]
        dist = np.take_along_axis(dist, order, axis=1)[:, :k]
        keep = ~np.take_along_axis(drop, order, axis=1)[:, :k]
    else:
        found, dist = found[:, :k], dist[:, :k]
        keep = found >= 0
    return _frame(loaded, labels, found, dist, keep, wanted)


def _carried(ds: LatentDataset, columns: Sequence[str] | None) -> list[str]:
    available = [c for c in ds.columns if c != "id"]
    if columns is None:
        return available
    columns = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in columns if c not in available and c != "id"]
    if unknown:
        raise InputError(
            f"no column {unknown[0]!r} in {ds.path}; columns: {', '.join(available) or 'none'}"
        )
    return [c for c in columns if c != "id"]


def _nprobe_params(loaded: LoadedIndex, nprobe: int | None) -> dict[str, float] | None:
    if nprobe is None:
        return None
    if "nprobe" not in loaded.info.params and loaded.info.kind not in ("ivf", "ivfpq"):
        raise InputError(
            f"nprobe applies to IVF indexes; this index is {loaded.info.kind} "
            f"({loaded.info.factory})"
        )
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise InputError(f"nprobe must be an integer >= 1, got {nprobe!r}")
    return {"nprobe": int(nprobe)}


def _strings(array: pa.Array) -> Any:
    """A pyarrow string array as a pandas column without per-element Python objects."""
    if _STR_DTYPE is not None:
        return pd.arrays.ArrowStringArray(array.cast(pa.large_string()), dtype=_STR_DTYPE)
    return array.to_numpy(zero_copy_only=False)


def _column(array: pa.Array) -> Any:
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return _strings(array)
    if array.null_count == 0 and (
        pa.types.is_integer(array.type)
        or pa.types.is_floating(array.type)
        or pa.types.is_boolean(array.type)
    ):
        return array.to_numpy(zero_copy_only=False)
    return array.to_pandas()


def _str_dtype() -> Any:
    """pandas' default ``str`` dtype (pyarrow-backed, NaN for missing) where available."""
    try:
        dtype = pd.StringDtype("pyarrow", na_value=np.nan)
        pd.arrays.ArrowStringArray(pa.array(["a"], pa.large_string()), dtype=dtype)
        return dtype
    except (TypeError, ValueError, ImportError, AttributeError):
        return None


_STR_DTYPE = _str_dtype()


def _frame(
    loaded: LoadedIndex,
    labels: np.ndarray | list,
    found: np.ndarray,
    dist: np.ndarray,
    keep: np.ndarray,
    wanted: list[str],
) -> pd.DataFrame:
    """Assemble the result with array takes only (no per-row Python)."""
    nq, k = found.shape
    flat_keep = keep.ravel()
    if flat_keep.all():
        slots = np.arange(nq * k)
        rows, scores = found.ravel(), dist.ravel()
    else:
        slots = np.flatnonzero(flat_keep)
        rows, scores = found.ravel()[slots], dist.ravel()[slots]
    which_query = slots // k
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        query: Any = labels[which_query]
    elif all(isinstance(label, str) for label in labels):  # one check per query, not per row
        query = _strings(pa.array(labels, pa.large_string()).take(pa.array(which_query)))
    else:  # PIL images (numbered) mixed with paths
        query = np.asarray(labels, dtype=object)[which_query]
    take = pa.array(rows)
    data: dict[str, Any] = {
        "query": query,
        "rank": slots % k + 1,
        "id": _strings(loaded.id_array.take(take)),
        "score" if loaded.metric == "cosine" else "distance": scores,
    }
    for name, array in loaded.columns(wanted).items():
        data[f"neighbor_{name}" if name in RESULT_COLUMNS else name] = _column(array.take(take))
    return pd.DataFrame(data, copy=False)
