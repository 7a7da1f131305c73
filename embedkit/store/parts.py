"""Part files of a latent dataset: names no two writers can share, how they are written,
and rewriting parts without some rows (re-embedding changed images)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedkit.files import atomic_path, fsync_dir
from embedkit.location import RemotePath
from embedkit.store.format import EMBEDDING, PART_GLOB, part_files, read_part

__all__ = ["EMBEDDING_PATH", "next_part_name", "parquet_options", "remove_rows"]

_PART_NUMBER = re.compile(r"^part-(\d+)")
# Parquet stores a list column's floats with per-value levels; compressing or
# dictionary-encoding them on top costs ~40% of read speed for almost no size (float
# latents barely compress), so the embedding column is written plain.
EMBEDDING_PATH = f"{EMBEDDING}.list.element"


def parquet_options(schema: pa.Schema) -> dict:
    """Writer options: snappy + dictionary for metadata columns, plain vectors."""
    others = [name for name in schema.names if name != EMBEDDING]
    compression = {name: "snappy" for name in others} | {EMBEDDING_PATH: "none"}
    return {"compression": compression, "use_dictionary": others}


def next_part_name(directory: Path | RemotePath) -> str:
    """``part-NNNNN-<token>.parquet``: numbered after the parts there (so names sort in
    writing order) with a random token, so two writers can never pick the same file."""
    numbers = [
        int(m.group(1)) for f in directory.glob(PART_GLOB) if (m := _PART_NUMBER.match(f.name))
    ]
    return f"part-{max(numbers, default=-1) + 1:05d}-{uuid.uuid4().hex[:8]}.parquet"


def remove_rows(path: Path | RemotePath, ids: Iterable[str]) -> int:
    """Rewrite every part of the dataset at ``path`` that holds one of ``ids`` without
    those rows (each part replaced atomically; a part left empty is deleted). Returns
    how many rows were removed. The caller holds the dataset's lock."""
    wanted = pa.array(sorted(set(map(str, ids))), pa.string())
    removed = 0
    for part in part_files(path):
        hit = pc.is_in(read_part(part, columns=["id"]).column("id"), value_set=wanted)
        count = pc.sum(hit).as_py() or 0
        if not count:
            continue
        table = read_part(part)
        kept = table.filter(pc.invert(hit))
        if kept.num_rows == 0:
            part.unlink()
            fsync_dir(path)
        else:
            with atomic_path(part) as tmp:
                pq.write_table(kept, tmp, **parquet_options(table.schema))
        removed += count
    return removed
