"""Search results as one DataFrame, assembled with array takes (no per-row Python)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from embedkit.index.loaded import LoadedIndex

__all__ = ["RESULT_COLUMNS", "results_frame"]

RESULT_COLUMNS = ("query", "rank", "id", "score", "distance")


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
