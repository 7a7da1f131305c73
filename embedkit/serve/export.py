"""Selections exported for download: the ids asked for that are in the dataset, with
their label columns, as CSV or Parquet bytes."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from embedkit.serve.responses import jsonable
from embedkit.serve.table import LabelTable

__all__ = ["export_bytes"]


def _flat(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs, maps) as JSON text: CSV holds only scalars."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [json.dumps(jsonable(v)) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def export_bytes(table: LabelTable, ids: Sequence[str], fmt: str) -> bytes:
    """``ids`` (those in ``table``, in storage order) with their labels as ``csv`` or
    ``parquet``."""
    selected = table.selection(ids)
    buffer = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(selected, buffer)
    else:
        pacsv.write_csv(_flat(selected), buffer)
    return buffer.getvalue()
