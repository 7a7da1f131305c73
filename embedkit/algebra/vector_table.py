"""Saving and loading named attribute vectors as a Parquet table with their backbone info."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.algebra.attributes import AttributeVector
from embedkit.errors import InputError
from embedkit.files import atomic_write_table
from embedkit.plugins.info import BackboneInfo

__all__ = ["load_vectors", "save_vectors"]

META_KEY = b"embedkit.vectors"


def save_vectors(vectors: Sequence[AttributeVector], path: str | Path) -> Path:
    """Write attribute vectors (one backbone) to a Parquet table: stats columns + ``vector``."""
    if not vectors:
        raise InputError("no attribute vectors to save")
    backbone = vectors[0].backbone
    for v in vectors:
        if not v.backbone.compatible_with(backbone):
            raise InputError(
                f"vector {v.name!r} comes from {v.backbone.name} {v.backbone.config}, not "
                f"{backbone.name} {backbone.config}; save each backbone's vectors separately"
            )
    stats = [v.stats() for v in vectors]
    columns = {key: [s[key] for s in stats] for key in stats[0]}
    flat = pa.array(np.stack([v.vector for v in vectors]).astype(np.float32).reshape(-1))
    table = pa.table({**columns, "vector": pa.FixedSizeListArray.from_arrays(flat, backbone.dim)})
    table = table.replace_schema_metadata({META_KEY: backbone.to_json().encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_table(table, path)
    return path


def load_vectors(path: str | Path) -> dict[str, AttributeVector]:
    """Read a table written by :func:`save_vectors`: ``{name: AttributeVector}``.

    A table saved before ``in_sample`` existed loads with ``in_sample=False``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"vectors table {path} does not exist; make it with `embedkit attributes`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path} is not a readable Parquet file ({exc})") from exc
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None or "vector" not in table.column_names:
        raise InputError(f"{path} is not an embedkit vectors table (no backbone metadata)")
    backbone = BackboneInfo.from_json(raw)
    matrix = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, backbone.dim)
    rows = table.drop_columns(["vector"]).to_pylist()
    out = {}
    for row, vector in zip(rows, matrix, strict=True):
        out[row["name"]] = AttributeVector(
            name=row["name"],
            vector=vector.astype(np.float32),
            backbone=backbone,
            column=row["column"],
            positive=row["positive"],
            negative=row["negative"],
            n_positive=int(row["n_positive"]),
            n_negative=int(row["n_negative"]),
            auc=float(row["auc"]) if row["auc"] is not None else math.nan,
            cohens_d=float(row["cohens_d"]) if row["cohens_d"] is not None else math.nan,
            in_sample=bool(row.get("in_sample") or False),  # tables saved before it: held out
        )
    return out
