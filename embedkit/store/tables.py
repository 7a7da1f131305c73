"""Rows of a latent dataset as Arrow: ids, sources, vectors, file stats and carried
columns turned into a table, and the dataset schema that table fixes (the vectors typed
plain and non-null, the dataset's metadata under the ``embedkit`` key).

The one writer and the part writers on Ray workers both build their rows here, so a part
is the same whoever wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from embedkit.errors import InputError
from embedkit.store.format import EMBEDDING, META_KEY, SOURCE_MTIME, SOURCE_SIZE, LatentMeta

__all__ = ["DTYPES", "cast_rows", "latent_schema", "rows_table", "vector_type"]

DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
#: columns every part has: a carried column of one of these names is not stored
RESERVED = ("id", "source", SOURCE_SIZE, SOURCE_MTIME, EMBEDDING)

Columns = pd.DataFrame | dict[str, Any] | None


def vector_type(meta: LatentMeta) -> pa.DataType:
    """``fixed_size_list<dtype>[dim]`` with required values: Parquet then stores no
    definition levels, which makes reading them ~1.8x faster."""
    value = pa.field("element", DTYPES[meta.dtype], nullable=False)
    return pa.list_(value, meta.dim)


def _stat_columns(
    stats: tuple[Sequence[int], Sequence[int]] | None, rows: int
) -> dict[str, pa.Array]:
    """The source file size and mtime columns (nulls where rows have no file)."""
    if stats is None:
        return {name: pa.nulls(rows, pa.int64()) for name in (SOURCE_SIZE, SOURCE_MTIME)}
    sizes, mtimes = (pa.array(np.asarray(v, dtype=np.int64), pa.int64()) for v in stats)
    if len(sizes) != rows or len(mtimes) != rows:
        raise InputError(f"file stats for {len(sizes)} rows, {rows} ids; pass one per id")
    return {SOURCE_SIZE: sizes, SOURCE_MTIME: mtimes}


def _column_array(name: str, values: Any, rows: int) -> pa.Array | pa.ChunkedArray:
    """One carried column as Arrow, keeping None/NaN as nulls and ints as ints."""
    try:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            array = values
        elif isinstance(values, (pd.Series, pd.Index)):
            array = pa.Array.from_pandas(values)
        elif isinstance(values, np.ndarray):
            array = pa.array(values)
        else:
            array = pa.array(list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputError(f"column {name!r} cannot be stored ({exc})") from exc
    if len(array) != rows:
        raise InputError(f"column {name!r} has {len(array)} values for {rows} ids")
    return array


def _strings(values: Any) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(pa.string())
    return pa.array(list(values), pa.string())


def rows_table(
    meta: LatentMeta,
    ids: Sequence[str] | pa.Array,
    sources: Sequence[str] | pa.Array,
    vectors: np.ndarray,
    columns: Columns = None,
    stats: tuple[Sequence[int], Sequence[int]] | None = None,
) -> pa.Table:
    """The rows as a table: id, source, file stats, carried columns, embedding (in
    ``meta.dtype``); not yet cast to a dataset's schema (:func:`cast_rows`)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.dtype(meta.dtype))
    if vectors.ndim != 2 or vectors.shape != (len(ids), meta.dim):
        raise InputError(
            f"vectors have shape {vectors.shape}; expected [N, {meta.dim}] with N = {len(ids)} ids"
        )
    if len(sources) != len(ids):
        raise InputError(f"{len(sources)} sources for {len(ids)} ids; pass one per id")
    flat = pa.array(vectors.reshape(-1), type=DTYPES[meta.dtype])
    data: dict[str, Any] = {
        "id": _strings(ids),
        "source": _strings(sources),
        **_stat_columns(stats, len(ids)),
    }
    for name, values in columns.items() if columns is not None else []:
        if name not in RESERVED:
            data[name] = _column_array(name, values, len(ids))
    data[EMBEDDING] = pa.FixedSizeListArray.from_arrays(flat, type=vector_type(meta))
    return pa.table(data)


def latent_schema(meta: LatentMeta, rows: pa.Schema) -> pa.Schema:
    """The dataset schema that rows of schema ``rows`` (a :func:`rows_table`) fix: the
    vectors required, ``meta`` attached."""
    at = rows.get_field_index(EMBEDDING)
    schema = rows.set(at, pa.field(EMBEDDING, vector_type(meta), nullable=False))
    return schema.with_metadata({META_KEY: meta.to_bytes()})


def cast_rows(table: pa.Table, schema: pa.Schema, where: Any) -> pa.Table:
    """``table`` in the dataset's ``schema``, or a one-line error naming the columns."""
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
        raise InputError(
            f"columns {table.schema.names} do not match the dataset's {schema.names} in "
            f"{where} ({exc})"
        ) from exc
