"""Latent edits the explorer shows: a stored latent moved along an attribute vector, and
the path between two latents. A decoding backbone turns the results into PNG images;
for any other, the nearest real images stand in."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from embedkit.algebra.arithmetic import interpolate
from embedkit.serve.search import nearest

if TYPE_CHECKING:
    from PIL import Image

    from embedkit.serve.state import ServeState

__all__ = ["edit", "interpolation", "png_bytes"]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def edit(
    state: ServeState, id_: str, column: str, value: str, alpha: float, k: int = 12
) -> bytes | dict[str, Any]:
    """``latent(id) + alpha * (centroid(column == value) - centroid(rest))``: PNG bytes of
    its decoding, or ``{"nearest": [...]}`` (the ``k`` nearest stored latents) when the
    backbone cannot decode."""
    version = state.current()
    version.row_of(id_)
    vector = state.attribute(version, column, value)
    edited = version.vectors([id_]) + np.float32(alpha) * vector
    if state.decodes():
        return png_bytes(state.decode(edited)[0])
    return {"nearest": nearest(state, version, edited, k)[0]}


def interpolation(
    state: ServeState, a: str, b: str, steps: int, mode: str, k: int = 1
) -> dict[str, Any]:
    """``steps`` latents from ``a`` to ``b`` (lerp or slerp), as PNG data URLs, or the ids
    of the ``k`` nearest stored latents of each step when the backbone cannot decode."""
    version = state.current()
    version.row_of(a)
    version.row_of(b)
    za, zb = version.vectors([a, b])
    path = interpolate(za, zb, steps=steps, method=mode)
    if state.decodes():
        images = state.decode(path)
        urls = [
            "data:image/png;base64," + base64.b64encode(png_bytes(im)).decode() for im in images
        ]
        return {"images": urls}
    found = nearest(state, version, path, k)
    return {"nearest": [[row["id"] for row in step] for step in found]}
