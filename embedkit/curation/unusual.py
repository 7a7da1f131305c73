"""How unusual each row is: the mean distance to its k nearest neighbours, and the rows
that stand out most (outliers), in one streamed pass over the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.curation.knn import BATCH_ROWS, curation_index, self_neighbours
from embedkit.errors import InputError
from embedkit.index.loaded import LoadedIndex
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["most_unique", "outliers", "robust_z", "uniqueness"]


def uniqueness(
    latents: str | Path | LatentDataset,
    k: int = 10,
    metric: str | None = None,
    index: LoadedIndex | None = None,
    batch_size: int = BATCH_ROWS,
    progress: bool = False,
) -> pd.DataFrame:
    """Every row's uniqueness: DataFrame ``id, uniqueness, distance, z`` (dataset order).

    ``distance`` is the mean distance to the row's ``k`` nearest other rows (``1 -
    cosine`` or squared L2); ``uniqueness`` is it scaled to [0, 1] over the dataset (0:
    the most crowded row, 1: the loneliest); ``z`` how many robust standard deviations
    (1.4826 x MAD) the log of ``distance`` lies above its median. Rows with an exact copy
    score low; rows far from everything score high.

    Example:
        >>> uniqueness("latents/").nlargest(10, "uniqueness")
    """
    ds = open_latents(latents)
    loaded = curation_index(ds, metric, index, progress)
    ids, means = [], []
    for hits in self_neighbours(ds, loaded, k, batch_size, progress, "uniqueness"):
        finite = np.isfinite(hits.distances)
        total = np.where(finite, hits.distances, 0).sum(axis=1)
        means.append(total / np.maximum(finite.sum(axis=1), 1))
        ids.append(np.asarray(hits.ids, dtype=object))
    if not ids:
        raise InputError(f"{ds.path} has no rows to score")
    distance = np.concatenate(means).astype(np.float64)
    low, high = distance.min(), distance.max()
    scaled = (distance - low) / (high - low) if high > low else np.zeros_like(distance)
    frame = pd.DataFrame(
        {
            "id": np.concatenate(ids),
            "uniqueness": scaled.astype(np.float32),
            "distance": distance.astype(np.float32),
            "z": robust_z(np.log(np.maximum(distance, 1e-12))).astype(np.float32),
        }
    )
    frame.attrs.update(metric=loaded.metric, k=int(k), rows=len(ds))
    return frame


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 x median absolute deviation); 0 spread counts as 1e-12."""
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre))
    return (values - centre) / max(float(spread), 1e-12)


def outliers(
    latents: str | Path | LatentDataset,
    top: int = 20,
    k: int = 10,
    metric: str | None = None,
    index: LoadedIndex | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The ``top`` most unique rows, loneliest first: ``rank, id, uniqueness, distance, z``
    (see :func:`uniqueness`).

    Example:
        >>> outliers("latents/", top=20)
    """
    scores = uniqueness(latents, k=k, metric=metric, index=index, progress=progress)
    return most_unique(scores, top)


def most_unique(scores: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` rows of a :func:`uniqueness` frame, loneliest first, ranked from 1."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be an integer >= 1, got {top!r}")
    found = scores.sort_values("distance", ascending=False, kind="stable").head(int(top))
    found.insert(0, "rank", np.arange(1, len(found) + 1))
    found.attrs.update(scores.attrs)
    return found.reset_index(drop=True)
