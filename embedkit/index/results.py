"""Search results as one DataFrame, assembled with array takes (no per-row Python)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from embedkit.index.loaded import LoadedIndex

__all__ = ["RESULT_COLUMNS", "frame_of", "hits_frame", "results_frame"]

RESULT_COLUMNS = ("query", "rank", "id", "score", "distance")


def _strings(array: pa.Array) -> Any:
    """A pyarrow string array as a pandas column without per-element Python objects."""
    if _STR_DTYPE is not None:
        if array.type != pa.large_string():
            array = array.cast(pa.large_string())
        return pd.arrays.ArrowStringArray(array, dtype=_STR_DTYPE)
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

try:  # pandas >= 3.0: a frame straight from its blocks, a fifth of the Python calls
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pragma: no cover - pandas 2
    _from_blocks = None

_column_indexes: dict[tuple[str, ...], pd.Index] = {}


def _block_ready(values: Any) -> bool:
    if isinstance(values, np.ndarray):
        return values.ndim == 1 and values.dtype.kind in "iufb"
    return isinstance(values, pd.api.extensions.ExtensionArray)


def frame_of(data: dict[str, Any]) -> pd.DataFrame:
    """``pd.DataFrame(data, copy=False)`` for 1-D columns of one length, built from its
    blocks (one per column, none copied) when every column is a numeric numpy array or a
    pandas extension array, so the per-call cost stays ~20 us rather than ~100 us."""
    if _from_blocks is None or not all(_block_ready(v) for v in data.values()):
        return pd.DataFrame(data, copy=False)
    names = tuple(data)
    columns = _column_indexes.get(names)
    if columns is None:
        if len(_column_indexes) >= 64:
            _column_indexes.clear()
        columns = _column_indexes[names] = pd.Index(list(names))
    blocks = [
        (v.reshape(1, -1) if isinstance(v, np.ndarray) else v, np.array([i]))
        for i, v in enumerate(data.values())
    ]
    rows = len(next(iter(data.values())))
    # a copy of the cached Index: renaming one frame's columns must not rename another's
    return _from_blocks(blocks, index=pd.RangeIndex(rows), columns=columns.copy())


def results_frame(
    loaded: LoadedIndex,
    labels: np.ndarray | list,
    found: np.ndarray,
    dist: np.ndarray,
    keep: np.ndarray,
    wanted: list[str],
) -> pd.DataFrame:
    """Assemble the result with array takes only (no per-row Python)."""
    nq, k = found.shape
    rows, scores = found.ravel(), dist.ravel()
    if keep.all():
        which_query = np.arange(nq).repeat(k)
        rank = np.tile(np.arange(1, k + 1, dtype=np.int64), nq)
    else:
        slots = np.flatnonzero(keep.ravel())
        rows, scores = rows[slots], scores[slots]
        which_query, rank = np.divmod(slots, k)
        rank += 1
    return hits_frame(loaded, labels, which_query, rank, rows, scores, wanted)


def hits_frame(
    loaded: LoadedIndex,
    labels: np.ndarray | list,
    which_query: np.ndarray,
    rank: np.ndarray,
    rows: np.ndarray,
    scores: np.ndarray,
    wanted: list[str],
) -> pd.DataFrame:
    """The result table of hits given one by one: the query (a position in ``labels``),
    the rank, the faiss row and the score of each."""
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        query: Any = labels[which_query]
    elif all(isinstance(label, str) for label in labels):  # one check per query, not per row
        query = _strings(pa.array(labels, pa.large_string()).take(pa.array(which_query)))
    else:  # PIL images (numbered) mixed with paths
        query = np.asarray(labels, dtype=object)[which_query]
    take = pa.array(rows)
    data: dict[str, Any] = {
        "query": query,
        "rank": rank,
        "id": _strings(loaded.id_array.take(take)),
        "score" if loaded.metric == "cosine" else "distance": scores,
    }
    for name, array in loaded.take_columns(wanted, take).items():
        data[f"neighbor_{name}" if name in RESULT_COLUMNS else name] = _column(array)
    return frame_of(data)
