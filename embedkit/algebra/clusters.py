"""Centroids per label and k-means clusters of latents (faiss, on the GPU when there is one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from embedkit.algebra.labels import labeled
from embedkit.errors import InputError
from embedkit.files import atomic_write_table
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["KMeansResult", "centroids", "kmeans", "kmeans_plus_plus"]

CLUSTERS_DIR = "clusters"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroids(
    latents: str | Path | LatentDataset,
    by: str,
    labels: str | Path | pd.DataFrame | None = None,
    normalize: bool = False,
    id_column: str | None = None,
) -> pd.DataFrame:
    """Mean latent per value of column ``by``: DataFrame ``label, n, centroid``.

    ``labels`` is joined on ``id_column`` (default: ``id``, or the labels column that
    matches the latent ids; see :func:`embedkit.algebra.labels.labeled`).

    Example:
        >>> centroids("latents/", by="color")   # one row per colour
    """
    data = labeled(latents, [by], labels, id_column)
    vectors = _unit(data.vectors) if normalize else data.vectors
    codes, uniques = pd.factorize(data.labels[by], sort=True)
    sums = np.zeros((len(uniques), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, vectors)
    counts = np.bincount(codes, minlength=len(uniques))
    means = (sums / counts[:, None]).astype(np.float32)
    return pd.DataFrame({"label": list(uniques), "n": counts, "centroid": list(means)})


@dataclass(frozen=True)
class KMeansResult:
    """Cluster assignments per id, the centroids, and the k-means objective."""

    assignments: pd.DataFrame  # id, cluster, distance (squared L2 to the centroid)
    centroids: np.ndarray  # [k, D]
    inertia: float
    normalized: bool

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignments["cluster"].to_numpy(), minlength=len(self.centroids))

    def save(self, latents: str | Path | LatentDataset, name: str = "cluster") -> Path:
        """Write ``<latents>/clusters/<name>.parquet`` (id, <name>, distance) for joining
        as a labels table; centroids go to ``<name>_centroids.parquet``."""
        import pyarrow as pa

        folder = open_latents(latents).path / CLUSTERS_DIR
        folder.mkdir(exist_ok=True)
        table = pa.Table.from_pandas(
            self.assignments.rename(columns={"cluster": name}), preserve_index=False
        )
        path = folder / f"{name}.parquet"
        atomic_write_table(table, path)
        k, dim = self.centroids.shape
        flat = pa.array(self.centroids.reshape(-1), pa.float32())
        atomic_write_table(
            pa.table(
                {
                    "cluster": pa.array(range(k), pa.int32()),
                    "centroid": pa.FixedSizeListArray.from_arrays(flat, dim),
                }
            ),
            folder / f"{name}_centroids.parquet",
        )
        return path


def kmeans_plus_plus(
    vectors: np.ndarray, k: int, seed: int = 0, sample: int = 50_000
) -> np.ndarray:
    """Greedy k-means++ seeding on a sample (as scikit-learn does): each new centroid is
    the best of a few distance-weighted candidates, so well-separated clusters are found
    reliably — faiss' default random seeding often merges two of them."""
    rng = np.random.default_rng(seed)
    if len(vectors) > sample:
        vectors = vectors[rng.choice(len(vectors), sample, replace=False)]
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(len(vectors)))]
    closest = ((vectors - vectors[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k
            chosen.append(int(rng.integers(len(vectors))))
            continue
        candidates = rng.choice(len(vectors), size=trials, p=closest / total)
        options = [np.minimum(closest, ((vectors - vectors[c]) ** 2).sum(1)) for c in candidates]
        best = int(np.argmin([o.sum() for o in options]))
        chosen.append(int(candidates[best]))
        closest = options[best]
    return np.ascontiguousarray(vectors[chosen], dtype=np.float32)


def kmeans(
    latents: str | Path | LatentDataset,
    k: int,
    niter: int = 25,
    seed: int = 0,
    normalize: bool | None = None,
    gpu: bool | None = None,
) -> KMeansResult:
    """Cluster the latents into ``k`` groups with ``faiss.Kmeans``.

    Args:
        k: number of clusters.
        normalize: cluster unit vectors (spherical k-means); default follows the
            dataset (``True`` when it was embedded with ``--normalize``).
        gpu: use the GPU; default when faiss sees one.

    Example:
        >>> result = kmeans("latents/", k=10)
        >>> result.assignments.head(), result.sizes
    """
    ds = open_latents(latents)
    stored = ds.to_numpy()  # may be a read-only view of an Arrow buffer: never written to
    if not 1 <= k <= len(stored):
        raise InputError(f"k={k} must be between 1 and the number of latents ({len(stored)})")
    if not np.isfinite(stored).all():
        raise InputError(f"latents in {ds.path} contain NaN or inf; re-embed them")
    spherical = ds.normalized if normalize is None else normalize
    if spherical:  # normalize_L2 works in place (through the raw pointer): on a copy
        vectors = np.array(stored, dtype=np.float32, order="C", copy=True)
        faiss.normalize_L2(vectors)
    else:  # faiss only reads these
        vectors = np.ascontiguousarray(stored, dtype=np.float32)
    use_gpu = faiss.get_num_gpus() > 0 if gpu is None else gpu and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(
        vectors.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        gpu=bool(use_gpu),
        max_points_per_centroid=100_000,
    )
    km.train(vectors, init_centroids=kmeans_plus_plus(vectors, k, seed))
    distances, assigned = km.index.search(vectors, 1)
    assignments = pd.DataFrame(
        {
            "id": ds.ids(),
            "cluster": assigned[:, 0].astype(np.int32),
            "distance": (2 - 2 * distances[:, 0]) if spherical else distances[:, 0],
        }
    )
    return KMeansResult(assignments, km.centroids.copy(), float(km.obj[-1]), bool(spherical))
