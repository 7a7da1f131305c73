"""Metrics and the vectors faiss is given: float32, C-contiguous, finite, unit length
for cosine."""

from __future__ import annotations

import faiss
import numpy as np

from embedkit.errors import InputError

__all__ = ["METRICS", "check_metric", "prepare_vectors"]

#: metric name -> the faiss metric an index of it uses (cosine: inner product of unit vectors)
METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def check_metric(metric: str | None) -> None:
    """Raise a one-line error unless ``metric`` is None or a supported metric."""
    if metric is not None and metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported; use {' or '.join(METRICS)}")


def prepare_vectors(vectors: np.ndarray, metric: str, what: str, check: bool = True) -> np.ndarray:
    """float32, C-contiguous, finite, L2-normalized for cosine (always a fresh copy)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if check and not np.isfinite(out).all():
        raise InputError(f"{what} hold NaN or inf values; fix or drop those rows and retry")
    if metric == "cosine":
        faiss.normalize_L2(out)
    return out
