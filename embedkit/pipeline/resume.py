"""Resume: which source rows a run still has to embed.

An image is recognised by its source path, not its id (ids made from the common folder
of the inputs change when the inputs do). An image whose file changed since it was
embedded (size or modification time) is stale: reported, and re-embedded with
``update=True``. An id already used by another image is an error, never a silent skip.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.location import RemotePath, file_stat
from embedkit.store.dataset import open_latents
from embedkit.store.format import (
    SOURCE_MTIME,
    SOURCE_SIZE,
    error_files,
    part_files,
    read_errors,
)
from embedkit.store.parts import remove_rows

__all__ = ["Pending", "pending_rows"]


@dataclass(frozen=True)
class Pending:
    """The rows to embed, how many were already there, and how many were stale."""

    rows: pd.DataFrame
    skipped: int
    stale: int  # changed since embedded, left as they are (no update)
    replaced: int  # changed since embedded, old rows removed to be embedded again


def _stored(out_dir: Path | RemotePath) -> pd.DataFrame:
    """id, source and file stats of every stored row (stats null where not recorded)."""
    if not part_files(out_dir):
        return pd.DataFrame({"id": [], "source": [], SOURCE_SIZE: [], SOURCE_MTIME: []})
    ds = open_latents(out_dir)
    names = ["id", "source", *[c for c in (SOURCE_SIZE, SOURCE_MTIME) if c in ds.schema.names]]
    stored = ds.to_table(names).to_pandas()
    for column in (SOURCE_SIZE, SOURCE_MTIME):
        if column not in stored:
            stored[column] = pd.NA
    return stored


def _changed(stored: pd.DataFrame) -> np.ndarray:
    """Which stored rows' files now differ in size or mtime (a missing file counts as
    unchanged: there is nothing new to embed)."""
    flags = np.zeros(len(stored), dtype=bool)
    sizes, mtimes = stored[SOURCE_SIZE].to_numpy(), stored[SOURCE_MTIME].to_numpy()
    for i, source in enumerate(stored["source"].to_numpy()):
        if pd.isna(sizes[i]) or pd.isna(mtimes[i]):
            continue
        try:
            st = file_stat(source)
        except (OSError, InputError):
            continue
        flags[i] = st.st_size != sizes[i] or st.st_mtime_ns != mtimes[i]
    return flags


def _check_id_conflicts(
    rows: pd.DataFrame, stored: pd.DataFrame, out_dir: Path | RemotePath
) -> None:
    source_of = dict(zip(stored["id"], stored["source"], strict=True))
    clash = rows["id"].isin(source_of) & ~rows["path"].isin(stored["source"])
    if clash.any():
        first = rows[clash].iloc[0]
        raise InputError(
            f"id {first['id']!r} of {first['path']} is already used in {out_dir} by "
            f"{source_of[first['id']]} ({int(clash.sum())} such rows); give the new images "
            "other ids (a table with an id column), or embed into another folder"
        )


def pending_rows(
    rows: pd.DataFrame, out_dir: Path | RemotePath, retry_errors: bool, update: bool
) -> Pending:
    """Drop rows already embedded (matched by source) and, unless ``retry_errors``, rows
    that failed before; with ``update``, remove the stored rows of changed files and keep
    those rows to embed again. The caller holds the dataset's lock."""
    stored = _stored(out_dir)
    _check_id_conflicts(rows, stored, out_dir)
    present = stored[stored["source"].isin(set(rows["path"]))]
    changed = present[_changed(present)]
    replaced = 0
    if update and len(changed):
        replaced = remove_rows(out_dir, changed["id"])
        stored = stored[~stored["id"].isin(set(changed["id"]))]
    elif len(changed):
        warnings.warn(
            f"{len(changed)} images changed since they were embedded (size or modification "
            f"time), e.g. {changed['source'].iloc[0]}; their latents are stale: re-run with "
            "--update (update=True) to embed them again",
            stacklevel=2,
        )
    if retry_errors:
        for f in error_files(out_dir):
            f.unlink()
        failed: set[str] = set()
    else:
        failed = set(read_errors(out_dir)["source"].tolist())
    done = set(stored["source"]) | failed
    keep = ~rows["path"].isin(done)
    return Pending(
        rows[keep].reset_index(drop=True), int((~keep).sum()), len(changed) - replaced, replaced
    )
