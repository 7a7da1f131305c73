"""Latent arithmetic: z + alpha*v, analogies a - b + c, lerp/slerp interpolation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedkit.algebra.attributes import AttributeVector
from embedkit.errors import InputError
from embedkit.plugins.info import BackboneInfo
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = [
    "analogy",
    "apply_vector",
    "check_same_space",
    "interpolate",
    "lerp",
    "slerp",
    "vectors_for_ids",
]


def vectors_for_ids(latents: str | Path | LatentDataset, ids: Sequence[str]) -> np.ndarray:
    """The stored vectors of ``ids`` in the order given, as float32."""
    return open_latents(latents).vectors_of(ids).astype(np.float32)


def check_same_space(a: BackboneInfo, b: BackboneInfo) -> None:
    """Refuse to mix latents of ``a`` with a vector made from ``b`` (another space)."""
    if not a.compatible_with(b):
        raise InputError(
            f"cannot mix latents of {a.name} (dim {a.dim}, {a.config}) with a vector from "
            f"{b.name} (dim {b.dim}, {b.config}); use vectors made from the same backbone"
        )


def apply_vector(
    z: np.ndarray,
    vector: AttributeVector | np.ndarray,
    alphas: Sequence[float] | float = 1.0,
    backbone: BackboneInfo | None = None,
) -> np.ndarray:
    """``z + alpha * v`` for each alpha: ``[N, D]`` -> ``[N, len(alphas), D]`` (or ``[N, D]``).

    Pass ``backbone`` (the latents' info) to have mixing backbones refused.
    """
    if isinstance(vector, AttributeVector):
        if backbone is not None:
            check_same_space(backbone, vector.backbone)
        vector = vector.vector
    z = np.atleast_2d(np.asarray(z, dtype=np.float32))
    v = np.asarray(vector, dtype=np.float32)
    if z.shape[1] != v.shape[-1]:
        raise InputError(f"latents have dim {z.shape[1]} but the vector has dim {v.shape[-1]}")
    scalar = np.isscalar(alphas)
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float32))
    out = z[:, None, :] + a[None, :, None] * v[None, None, :]
    return out[:, 0, :] if scalar else out


def analogy(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a - b + c`` ("b is to a as c is to ?"), broadcasting over leading dims."""
    return np.asarray(a, np.float32) - np.asarray(b, np.float32) + np.asarray(c, np.float32)


def lerp(z1: np.ndarray, z2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Straight-line interpolation at fractions ``t``: ``[T, D]``."""
    t = np.asarray(t, dtype=np.float32)[:, None]
    return (1 - t) * np.asarray(z1, np.float32)[None] + t * np.asarray(z2, np.float32)[None]


def slerp(z1: np.ndarray, z2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (the arc between the directions, norms interpolated linearly);
    falls back to lerp when the vectors are (anti)parallel or zero."""
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    t = np.asarray(t, dtype=np.float64)[:, None]
    n1, n2 = np.linalg.norm(z1), np.linalg.norm(z2)
    if n1 < 1e-12 or n2 < 1e-12:
        return lerp(z1, z2, t[:, 0])
    u1, u2 = z1 / n1, z2 / n2
    omega = np.arccos(np.clip(u1 @ u2, -1.0, 1.0))
    if omega < 1e-6 or np.pi - omega < 1e-6:
        return lerp(z1, z2, t[:, 0])
    direction = (np.sin((1 - t) * omega) * u1 + np.sin(t * omega) * u2) / np.sin(omega)
    return (direction * ((1 - t) * n1 + t * n2)).astype(np.float32)


def interpolate(
    z1: np.ndarray, z2: np.ndarray, steps: int = 8, method: str = "slerp"
) -> np.ndarray:
    """``steps`` points from ``z1`` to ``z2`` inclusive (lerp or slerp): ``[steps, D]``."""
    if steps < 2:
        raise InputError(f"steps must be at least 2 (got {steps})")
    if np.shape(z1) != np.shape(z2):
        raise InputError(f"cannot interpolate between shapes {np.shape(z1)} and {np.shape(z2)}")
    t = np.linspace(0.0, 1.0, steps)
    if method == "lerp":
        return lerp(z1, z2, t)
    if method == "slerp":
        return slerp(z1, z2, t)
    raise InputError(f"unknown interpolation method {method!r}; use lerp or slerp")
