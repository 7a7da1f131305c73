"""Likely label mistakes: rows whose k nearest neighbours mostly carry another label.

Each row's neighbours vote (itself left out, so every vote is out-of-sample, as
cleanlab asks of its predicted probabilities); the row is ranked by the margin of the
most voted other label over its own. How far to trust the ranking depends on how well
the latents separate the labels at all: ``attrs["agreement"]``, the share of rows whose
neighbourhood majority agrees with their label, says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.curation.knn import BATCH_ROWS, curation_index, self_neighbours
from embedkit.errors import InputError
from embedkit.index.loaded import LoadedIndex
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["label_issues"]


def label_issues(
    latents: str | Path | LatentDataset,
    column: str,
    k: int = 10,
    metric: str | None = None,
    index: LoadedIndex | None = None,
    batch_size: int = BATCH_ROWS,
    progress: bool = False,
) -> pd.DataFrame:
    """Every labelled row, likeliest mistake first: DataFrame ``id, label, suggested,
    confidence, agreement, suggested_share, issue``.

    Args:
        latents: a latent dataset folder or :class:`LatentDataset`.
        column: the carried label column (rows where it is null are skipped).
        k: neighbours that vote.

    Returns:
        ``agreement``: the share of the row's neighbours with its label;
        ``suggested``: the label most of them carry (its own on a tie);
        ``suggested_share``: their share; ``confidence``: ``suggested_share -
        agreement`` (0 when ``suggested`` is the row's own label); ``issue``: whether
        ``suggested`` differs. Sorted by confidence, then by agreement (lowest first).
        ``attrs["agreement"]``: the share of rows with ``issue`` False.

    Example:
        >>> label_issues("latents/", "shape").head(20)
    """
    ds = open_latents(latents)
    if column not in ds.columns or column == "id":
        raise InputError(
            f"no label column {column!r} in {ds.path}; columns: {', '.join(ds.columns)} "
            "(carry labels by embedding a table with them: `embedkit embed labels.parquet`)"
        )
    loaded = curation_index(ds, metric, index, progress)
    codes, names = _codes_by_row(ds, loaded, column)
    parts = [
        _votes(hits.ids, codes[hits.rows], codes[hits.found], hits.found >= 0)
        for hits in self_neighbours(ds, loaded, k, batch_size, progress, "label votes")
    ]
    frame = pd.concat(parts, ignore_index=True) if parts else _votes_frame_empty()
    frame = frame[frame["code"] >= 0]
    frame = frame.sort_values(
        ["confidence", "agreement"], ascending=[False, True], kind="stable", ignore_index=True
    )
    frame.insert(1, "label", names[frame.pop("code").to_numpy()])
    frame.insert(2, "suggested", names[frame.pop("suggested_code").to_numpy()])
    frame.attrs.update(
        column=column,
        k=int(k),
        metric=loaded.metric,
        rows=len(frame),
        agreement=float(1 - frame["issue"].mean()) if len(frame) else 1.0,
    )
    return frame


def _codes_by_row(
    ds: LatentDataset, loaded: LoadedIndex, column: str
) -> tuple[np.ndarray, np.ndarray]:
    """The label code of every faiss row (-1: no label) and the labels by code."""
    table = ds.to_table(["id", column]).to_pandas()
    codes, names = pd.factorize(table[column], sort=True)
    by_row = np.full(loaded.ntotal, -1, dtype=np.int64)
    by_row[loaded.rows_of(table["id"].to_numpy(dtype=object))] = codes
    return by_row, np.asarray(names, dtype=object)


def _votes(ids: np.ndarray, own: np.ndarray, voted: np.ndarray, valid: np.ndarray) -> pd.DataFrame:
    """The vote of each row's neighbours: counts of each neighbour's label among them
    (an ``O(k^2)`` comparison per row, whatever the number of labels)."""
    voted = np.where(valid, voted, -1)
    counted = voted >= 0
    same = (voted[:, :, None] == voted[:, None, :]) & counted[:, None, :]
    counts = np.where(counted, same.sum(axis=2), 0)
    voters = np.maximum(counted.sum(axis=1), 1)
    best = counts.argmax(axis=1)  # the nearest of the most voted labels
    best_count = counts[np.arange(len(best)), best]
    own_count = ((voted == own[:, None]) & counted).sum(axis=1)
    keep_own = (own_count >= best_count) | (best_count == 0)
    suggested = np.where(keep_own, own, voted[np.arange(len(best)), best])
    return pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=object),
            "code": own,
            "suggested_code": suggested,
            "confidence": np.where(keep_own, 0, best_count - own_count) / voters,
            "agreement": own_count / voters,
            "suggested_share": np.where(keep_own, own_count, best_count) / voters,
            "issue": ~keep_own,
        }
    )


def _votes_frame_empty() -> pd.DataFrame:
    empty = np.zeros(0, dtype=np.int64)
    return _votes(np.zeros(0, dtype=object), empty, np.zeros((0, 1), np.int64), empty[:, None] > 0)
