"""2-D maps of a latent dataset: PCA by default (faiss' ``PCAMatrix``, no extra), UMAP
with ``umap-learn`` and t-SNE with ``scikit-learn`` when they are installed.

Large sets are mapped on a seeded sample of ``sample`` rows, read in one streamed pass
(memory stays at the sample). PCA and UMAP are fitted on at most ``FIT_ROWS`` of those
rows and place the others with the fitted transform; t-SNE has no transform, so it fits
every sampled row. One module for the explorer's map and for ``embedkit map``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.store.dataset import LatentDataset

__all__ = ["FIT_ROWS", "METHODS", "available_methods", "project", "sample_positions"]

METHODS = ("pca", "umap", "tsne")
#: rows a method is fitted on (the rest of the sample is placed by the fitted transform)
FIT_ROWS = 20_000
_EXTRAS = {"umap": ("umap", "umap-learn"), "tsne": ("sklearn.manifold", "scikit-learn")}


def available_methods() -> list[str]:
    """The methods that can run here: ``pca`` always, the others when their extra is
    installed."""
    return [
        "pca",
        *(
            m
            for m, (module, _) in _EXTRAS.items()
            if importlib.util.find_spec(module.split(".")[0]) is not None
        ),
    ]


def sample_positions(n: int, sample: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row positions of a seeded random sample of ``sample`` rows (all when None
    or when there are no more rows than that)."""
    if sample is None or sample >= n:
        return np.arange(n)
    if sample < 1:
        raise InputError(f"sample must be >= 1 rows, got {sample}")
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def project(
    ds: LatentDataset, method: str = "pca", sample: int | None = 50_000, seed: int = 0
) -> pd.DataFrame:
    """2-D coordinates of (a sample of) the rows of ``ds``: columns ``id, x, y``.

    Args:
        ds: an opened latent dataset (a filtered view maps only its rows).
        method: ``pca`` (no extra needed), ``umap`` (``umap-learn``), ``tsne``
            (``scikit-learn``).
        sample: map a seeded random sample of this many rows; None maps every row.
        seed: the sample's and the method's seed.
    """
    if method not in METHODS:
        raise InputError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    ids, vectors = _sampled(ds, sample_positions(len(ds), sample, seed))
    if len(ids) == 0:
        return pd.DataFrame({"id": ids, "x": np.zeros(0, "f4"), "y": np.zeros(0, "f4")})
    coords = _MAPPERS[method](vectors, seed)
    return pd.DataFrame({"id": ids, "x": coords[:, 0], "y": coords[:, 1]})


def _sampled(ds: LatentDataset, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids and float32 vectors at sorted ``positions``, in one streamed pass."""
    ids, vectors, offset = [], [], 0
    for batch in ds.iter_batches():
        lo, hi = np.searchsorted(positions, [offset, offset + len(batch.ids)])
        take = positions[lo:hi] - offset
        ids.append(np.asarray(batch.ids, dtype=object)[take])
        vectors.append(np.asarray(batch.vectors, dtype=np.float32)[take])
        offset += len(batch.ids)
    if not ids:
        return np.array([], dtype=object), np.zeros((0, ds.dim), np.float32)
    return np.concatenate(ids), np.ascontiguousarray(np.concatenate(vectors))


def _fit_rows(n: int, seed: int) -> np.ndarray:
    return sample_positions(n, FIT_ROWS, seed + 1)


def _pca(vectors: np.ndarray, seed: int) -> np.ndarray:
    import faiss

    if vectors.shape[1] < 2:  # nothing to reduce: the one axis, and zeros
        return np.column_stack([vectors[:, 0], np.zeros(len(vectors), np.float32)])
    pca = faiss.PCAMatrix(vectors.shape[1], 2)
    pca.train(vectors[_fit_rows(len(vectors), seed)])
    return pca.apply(vectors)


def _umap(vectors: np.ndarray, seed: int) -> np.ndarray:
    umap = _extra("umap")
    fit = _fit_rows(len(vectors), seed)
    reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(fit) - 1))
    reducer.fit(vectors[fit])
    return np.asarray(reducer.transform(vectors), dtype=np.float32)


def _tsne(vectors: np.ndarray, seed: int) -> np.ndarray:
    manifold = _extra("tsne")
    perplexity = float(min(30, max(1, len(vectors) - 1) / 3))
    tsne = manifold.TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca")
    return np.asarray(tsne.fit_transform(vectors), dtype=np.float32)


def _extra(method: str) -> ModuleType:
    module, package = _EXTRAS[method]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"map method {method!r} needs {package}: pip install {package} "
            "(or use --method pca, which needs nothing)"
        ) from None


_MAPPERS = {"pca": _pca, "umap": _umap, "tsne": _tsne}
