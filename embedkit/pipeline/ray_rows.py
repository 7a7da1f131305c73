"""The rows of the Ray engine as Arrow: what the driver sends into Ray (id, path and the
carried columns) and an encoded batch read back as rows to store and failed inputs.

Every row carries what its part needs, so whoever writes a batch (a part writer on a
worker, or the driver) writes it without asking the driver for anything. Engine columns
never clash with a source's own: the carried columns travel inside one struct column.
Imports no torch: part writers load only this and the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "CARRIED",
    "EncodedRows",
    "carried_schema",
    "fixed_list",
    "fixed_list_numpy",
    "good_rows",
    "input_table",
    "split_batch",
]

#: the struct column holding a row's carried columns
CARRIED = "carried"


def input_table(rows: pd.DataFrame, carried: pd.DataFrame | None) -> pa.Table:
    """id, path and (when there are any) the carried columns as one struct column, typed
    as :func:`~embedkit.pipeline.steps.carried_columns` made them."""
    table = pa.table(
        {
            "id": pa.array(rows["id"].astype(str).tolist(), pa.string()),
            "path": pa.array(rows["path"].astype(str).tolist(), pa.string()),
        }
    )
    if carried is None:
        return table
    columns = pa.Table.from_pandas(carried, preserve_index=False)
    arrays = [column.combine_chunks() for column in columns.columns]
    struct = pa.StructArray.from_arrays(arrays, names=columns.column_names)
    return table.append_column(CARRIED, struct)


def carried_schema(rows: pa.Table) -> pa.Schema | None:
    """The carried columns' schema of :func:`input_table` rows (None without any)."""
    if CARRIED not in rows.column_names:
        return None
    return pa.schema(list(rows.schema.field(CARRIED).type))


def fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """``[N, K]`` numpy -> ``fixed_size_list<dtype>[K]`` (no copy of the values)."""
    flat = values.reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def fixed_list_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """``fixed_size_list<dtype>[K]`` -> ``[N, K]`` numpy of that dtype."""
    array = column.combine_chunks()
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def good_rows(batch: pa.Table) -> np.ndarray:
    """Which rows decoded (no ``error`` reason)."""
    return pc.equal(batch.column("error"), "").to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class EncodedRows:
    """One encoded batch read back: the rows to store (arguments of
    :meth:`LatentWriter.write`), the inputs that failed, and a plugin failure if any."""

    ids: pa.ChunkedArray
    sources: pa.ChunkedArray
    vectors: np.ndarray
    columns: dict[str, pa.ChunkedArray] | None
    stats: tuple[np.ndarray, np.ndarray]
    failed: tuple[list[str], list[str]]
    fatal: tuple[str, str] | None


def split_batch(batch: pa.Table) -> EncodedRows:
    """An encoded batch as rows to store and failures to record."""
    fatal_at = np.flatnonzero(batch.column("fatal").to_numpy(zero_copy_only=False))
    fatal = None
    if len(fatal_at):
        at = int(fatal_at[0])
        fatal = (batch.column("path")[at].as_py(), batch.column("error")[at].as_py())
    good = good_rows(batch)
    bad = batch.filter(pa.array(~good))
    failed = (bad.column("path").to_pylist(), bad.column("error").to_pylist())
    rows = batch.filter(pa.array(good))
    columns = None
    if CARRIED in rows.column_names:
        carried = rows.column(CARRIED)
        names = [field.name for field in carried.type]
        columns = dict(zip(names, carried.flatten(), strict=True))
    stats = tuple(rows.column(c).to_numpy() for c in ("size", "mtime"))
    vectors = fixed_list_numpy(rows.column("embedding"))
    return EncodedRows(
        rows.column("id"), rows.column("path"), vectors, columns, stats, failed, fatal
    )
