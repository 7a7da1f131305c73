"""Thousands of queries in one call: ids from a file or every image of a folder, searched
in chunks (a progress bar, memory bounded by the chunk) into one result table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from embedkit.errors import InputError
from embedkit.images.sources import read_source
from embedkit.index.search import neighbors

__all__ = ["CHUNK", "read_query_ids", "search_many"]

#: queries per neighbors() call: one faiss batch, and the unit of the progress bar
CHUNK = 1024


def read_query_ids(path: str | os.PathLike) -> list[str]:
    """Query ids from ``path``: a Parquet/CSV table with an ``id`` column, or a text file
    with one id per line (blank lines and ``#`` comments skipped)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"no id file {file}; give a .txt (one id per line) or a table")
    if file.suffix.lower() in (".parquet", ".pq", ".csv"):
        table = pd.read_parquet(file) if file.suffix.lower() != ".csv" else pd.read_csv(file)
        if "id" not in table.columns:
            raise InputError(f"{file} has no 'id' column; columns: {', '.join(table.columns)}")
        return [str(i) for i in table["id"].tolist()]
    lines = (line.strip() for line in file.read_text(encoding="utf-8").splitlines())
    ids = [line for line in lines if line and not line.startswith("#")]
    if not ids:
        raise InputError(f"{file} holds no ids (one per line)")
    return ids


def search_many(
    latents: Any,
    ids: Sequence[str] | None = None,
    images: str | os.PathLike | Sequence[str] | None = None,
    k: int = 10,
    progress: bool = False,
    chunk: int = CHUNK,
    **options: Any,
) -> pd.DataFrame:
    """:func:`~embedkit.index.search.neighbors` of many ``ids`` or ``images`` (a folder:
    every image in it), ``chunk`` queries per call; one DataFrame, queries in order."""
    if (ids is None) == (images is None):
        raise InputError("pass exactly one of ids= or images=")
    if images is not None and isinstance(images, (str, os.PathLike)):
        images = read_source(images)["path"].tolist()  # a folder, as `embed` reads it
    queries = list(ids if ids is not None else images)
    key = "ids" if ids is not None else "images"
    from tqdm.auto import tqdm

    frames = []
    with tqdm(total=len(queries), unit="query", desc="search", disable=not progress) as bar:
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            frames.append(neighbors(latents, k=k, **{key: part}, **options))
            bar.update(len(part))
    if not frames:
        raise InputError(f"no {key} to search for")
    return pd.concat(frames, ignore_index=True)
