"""Where curation results are saved: Parquet tables joinable on ``id``, inside the latent
dataset folder (``duplicates/``, ``maps/``, ...), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa

from embedkit.errors import InputError
from embedkit.files import atomic_write_table
from embedkit.store.dataset import LatentDataset

__all__ = ["result_path", "write_frame"]

META_KEY = b"embedkit.curation"


def result_path(ds: LatentDataset, folder: str, name: str) -> Path:
    """``<latents>/<folder>/<name>.parquet``, refusing a name that is not a plain name."""
    if not name or Path(name).name != name or name.startswith("."):
        raise InputError(f"--name {name!r} must be a plain file name (no folders, no dot first)")
    return ds.path / folder / f"{name}.parquet"


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as Parquet atomically (its ``attrs`` kept as JSON in the schema
    metadata under ``embedkit.curation``) and return the path."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {**(table.schema.metadata or {}), META_KEY: json.dumps(frame.attrs, default=str)}
    table = table.replace_schema_metadata(meta)
    path = Path(path)
    atomic_write_table(table, path)
    return path
