"""A diverse subset: greedy k-center (the coreset of Sener & Savarese, Gonzalez's
2-approximation), and the coverage radius of any subset.

Greedy k-center starts from the row nearest the mean, then adds, one at a time, the row
farthest from everything chosen so far. One array of N distances (each row's distance
to its nearest chosen row) is kept and updated after each pick with one matrix-vector
product over the vectors: n picks cost n passes over them, and nothing is N x N. The
vectors are those :meth:`LatentDataset.to_numpy` gives (a memory map of the vector cache
when there is one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from embedkit.curation.knn import BATCH_ROWS, dataset_metric
from embedkit.errors import InputError
from embedkit.index.select import stream_batches
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["coverage_radius", "diverse_subset"]

#: rows per block of a pass over the vectors (bounds the float32 copies made)
BLOCK_ROWS = 262_144


def blocks(vectors: np.ndarray) -> Iterator[np.ndarray]:
    """``vectors`` as float32 blocks of ``BLOCK_ROWS`` rows (views when already float32)."""
    for start in range(0, len(vectors), BLOCK_ROWS):
        yield np.asarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)


class Distances:
    """Distances from every row to one row, in the metric's distance (``1 - cosine`` or
    squared L2), computed block by block from the stored vectors."""

    def __init__(self, vectors: np.ndarray, metric: str):
        self.vectors = vectors
        self.metric = metric
        self.norms = np.concatenate([np.linalg.norm(b, axis=1) for b in blocks(vectors)])

    def to(self, row: int) -> np.ndarray:
        centre = np.asarray(self.vectors[row], dtype=np.float32)
        dots = np.concatenate([block @ centre for block in blocks(self.vectors)])
        if self.metric == "cosine":
            scale = np.maximum(self.norms * self.norms[row], 1e-12)
            return np.maximum(1.0 - dots / scale, 0.0)
        return np.maximum(self.norms**2 - 2 * dots + self.norms[row] ** 2, 0.0)

    def central_row(self) -> int:
        """The row nearest the mean (of the unit vectors, for cosine)."""
        unit = self.metric == "cosine"
        total = np.zeros(self.vectors.shape[1], np.float64)
        starts = range(0, len(self.norms), BLOCK_ROWS)
        for start, block in zip(starts, blocks(self.vectors), strict=True):
            norms = self.norms[start : start + len(block), None]
            total += (block / np.maximum(norms, 1e-12) if unit else block).sum(axis=0)
        mean = (total / max(len(self.norms), 1)).astype(np.float32)
        gaps = [((block - mean) ** 2).sum(axis=1) for block in blocks(self.vectors)]
        return int(np.argmin(np.concatenate(gaps)))


def diverse_subset(
    latents: str | Path | LatentDataset,
    n: int,
    metric: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """``n`` rows spread over the latent space by greedy k-center: DataFrame ``id, order,
    radius``, in the order picked.

    ``radius`` is the coverage radius of the first ``order + 1`` picks: every row of the
    dataset lies within that distance (``1 - cosine`` or squared L2) of one of them; it
    shrinks as rows are added and the last one is the subset's (``attrs["radius"]``).

    Example:
        >>> diverse_subset("latents/", 500)["id"]
    """
    ds = open_latents(latents)
    metric = dataset_metric(ds, metric)
    total = len(ds)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
        raise InputError(f"n must be an integer between 1 and the {total} rows of {ds.path}")
    vectors = ds.to_numpy()
    if not all(np.isfinite(block).all() for block in blocks(vectors)):
        raise InputError(f"latents in {ds.path} hold NaN or inf values; re-embed them")
    far = Distances(vectors, metric)
    picks, radii = [far.central_row()], []
    nearest = far.to(picks[0])
    with tqdm(total=int(n), desc="k-center", unit="pick", disable=not progress) as bar:
        bar.update(1)
        radii.append(float(nearest.max()))
        for _ in range(1, int(n)):
            picks.append(int(np.argmax(nearest)))
            np.minimum(nearest, far.to(picks[-1]), out=nearest)
            radii.append(float(nearest.max()))
            bar.update(1)
    ids = ds.ids()
    frame = pd.DataFrame(
        {"id": ids[picks], "order": np.arange(len(picks)), "radius": np.float32(radii)}
    )
    frame.attrs.update(metric=metric, radius=radii[-1], rows=total)
    return frame


def coverage_radius(
    latents: str | Path | LatentDataset,
    ids: Sequence[str],
    metric: str | None = None,
    batch_size: int = BATCH_ROWS,
) -> float:
    """The largest distance from any row to its nearest row among ``ids`` (exact, one
    streamed pass, an exact faiss search of each batch against ``ids``' vectors)."""
    import faiss

    from embedkit.index.metric import METRICS, prepare_vectors

    ds = open_latents(latents)
    metric = dataset_metric(ds, metric)
    if len(ids) == 0:
        raise InputError("coverage_radius needs at least one id")
    centres = prepare_vectors(ds.vectors_of(list(ids)), metric, "the subset's vectors")
    flat = faiss.IndexFlat(ds.dim, METRICS[metric])
    flat.add(centres)
    worst = 0.0
    for _, _, vectors in stream_batches(ds, metric, batch_size):
        raw, _ = flat.search(vectors, 1)
        distance = 1.0 - raw[:, 0] if metric == "cosine" else raw[:, 0]
        worst = max(worst, float(np.max(distance, initial=0.0)))
    return worst
