"""The k-NN probe: each held-out row takes the majority class (or the mean value) of its
k nearest training rows, found exactly by faiss in the dataset's metric."""

from __future__ import annotations

import faiss
import numpy as np

from embedkit.index.metric import METRICS, prepare_vectors

__all__ = ["knn_predict", "nearest_training_rows"]


def nearest_training_rows(train: np.ndarray, test: np.ndarray, k: int, metric: str) -> np.ndarray:
    """``[n_test, k]`` positions of each test row's nearest training rows, nearest first."""
    base = prepare_vectors(train, metric, "latents")
    queries = prepare_vectors(test, metric, "latents")
    _, found = faiss.knn(queries, base, min(k, len(base)), metric=METRICS[metric])
    return found


def knn_predict(neighbours: np.ndarray, train_values: np.ndarray, categorical: bool) -> np.ndarray:
    """Predictions from the neighbours' values: the majority class (a tie goes to the class
    of the nearer neighbours), or the mean."""
    values = train_values[neighbours]
    if not categorical:
        return values.mean(axis=1)
    n, k = values.shape
    # one vote each, plus under one vote in total by rank: breaks ties, never a majority
    weights = 1.0 + np.linspace(1.0, 0.0, k, endpoint=False) / (k + 1)
    votes = np.zeros((n, int(train_values.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(n), k), values.ravel()), np.tile(weights, n))
    return votes.argmax(axis=1)
