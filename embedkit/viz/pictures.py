"""Pictures of latent edits: attribute sweeps, interpolation strips, analogies, neighbours.

Edited latents become images by decoding (AE/VAE backbones) or, for any backbone, by
showing the corpus image nearest to each edited latent (``mode="neighbors"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedkit.algebra.arithmetic import analogy, apply_vector, interpolate, vectors_for_ids
from embedkit.algebra.attributes import AttributeVector
from embedkit.errors import EmbedkitError, InputError
from embedkit.images.decode import load_image
from embedkit.index.search import neighbors
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.registry import load_backbone
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.viz.grid import image_grid, load_thumbnail, save_png

__all__ = [
    "LatentRenderer",
    "analogy_grid",
    "attribute_sweep",
    "interpolation_strip",
    "neighbour_grid",
    "render_latents",
]

Endpoint = str | os.PathLike


class LatentRenderer:
    """Turns latents into images for one dataset: decode, or nearest corpus image."""

    def __init__(
        self,
        latents: str | Path | LatentDataset,
        mode: str = "auto",
        cell: int = 96,
        backbone: Backbone | None = None,
    ):
        if mode not in ("auto", "decode", "neighbors"):
            raise InputError(f"unknown mode {mode!r}; use auto, decode or neighbors")
        self.ds = open_latents(latents)
        self.cell = cell
        self._backbone = backbone
        if mode == "auto":
            mode = "decode" if self._decoder_available() else "neighbors"
        elif mode == "decode" and not self._decoder_available():
            raise InputError(
                f"backbone {self.ds.backbone.name} has no decoder; use "
                "mode='neighbors' (nearest corpus images)"
            )
        self.mode = mode

    def _decoder_available(self) -> bool:
        try:
            return self.backbone.can_decode
        except EmbedkitError:  # backbone not installed or weights unavailable here
            return False

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.ds.backbone)
        return self._backbone

    def source_images(self, ids: Sequence[str]) -> list[Image.Image | None]:
        table = self.ds.filter(id=list(ids)).to_pandas(["id", "source"], embedding=False)
        sources = dict(zip(table["id"], table["source"], strict=True))
        return [load_thumbnail(sources[i], self.cell) if i in sources else None for i in ids]

    def render(self, z: np.ndarray) -> tuple[list[Image.Image | None], list[str]]:
        """Images for latents ``[M, D]`` and a caption for each (the neighbour id, if any)."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if self.mode == "decode":
            return self.backbone.decode_images(z), [""] * len(z)
        found = neighbors(self.ds, vectors=z, k=1)
        ids = found.sort_values("query")["id"].tolist()
        return self.source_images(ids), ids

    def encode_endpoint(self, endpoint: Endpoint) -> np.ndarray:
        """An id in the dataset, or an image file embedded with the dataset's backbone."""
        as_id = str(endpoint)
        if len(self.ds.filter(id=as_id)):
            return vectors_for_ids(self.ds, [as_id])[0]
        if Path(endpoint).is_file():
            z = self.backbone.encode_images([load_image(endpoint)]).numpy()[0]
            return z / max(np.linalg.norm(z), 1e-12) if self.ds.normalized else z
        raise InputError(f"{endpoint!r} is neither an id in {self.ds.path} nor an image file")


def render_latents(
    latents: str | Path | LatentDataset, z: np.ndarray, mode: str = "auto"
) -> list[Image.Image | None]:
    """Latents ``[M, D]`` -> images, decoded or as nearest corpus images."""
    return LatentRenderer(latents, mode).render(z)[0]


def _finish(grid: Image.Image, out: str | os.PathLike | None) -> Image.Image:
    if out is not None:
        save_png(grid, out)
    return grid


def attribute_sweep(
    latents: str | Path | LatentDataset,
    vector: AttributeVector,
    ids: Sequence[str],
    alphas: Sequence[float] = (-2, -1, 0, 1, 2),
    mode: str = "auto",
    out: str | os.PathLike | None = None,
    cell: int = 96,
) -> Image.Image:
    """Rows: each id's image, then ``z + alpha * v`` rendered for every alpha.

    Example:
        >>> attribute_sweep("latents/", v, ["a.png", "b.png"], out="sweep.png")
    """
    renderer = LatentRenderer(latents, mode, cell)
    z = vectors_for_ids(renderer.ds, ids)
    edited = apply_vector(z, vector, list(alphas), backbone=renderer.ds.backbone)
    images, _ = renderer.render(edited.reshape(-1, z.shape[1]))
    originals = renderer.source_images(list(ids))
    rows, captions, width = [], [], len(alphas)
    for r, original in enumerate(originals):
        rows.append([original, *images[r * width : (r + 1) * width]])
        captions.append(["original", *[f"{a:+g}" for a in alphas]])
    return _finish(image_grid(rows, cell, captions, row_titles=[str(i) for i in ids]), out)


def interpolation_strip(
    latents: str | Path | LatentDataset,
    start: Endpoint,
    end: Endpoint,
    steps: int = 8,
    methods: Sequence[str] = ("lerp", "slerp"),
    mode: str = "auto",
    out: str | os.PathLike | None = None,
    cell: int = 96,
) -> Image.Image:
    """One row per method: ``steps`` latents from ``start`` to ``end`` (ids or image files)."""
    renderer = LatentRenderer(latents, mode, cell)
    z1, z2 = renderer.encode_endpoint(start), renderer.encode_endpoint(end)
    rows, captions = [], []
    for method in methods:
        images, names = renderer.render(interpolate(z1, z2, steps, method))
        rows.append(images)
        captions.append(
            names
            if renderer.mode == "neighbors"
            else [f"t={t:.2f}" for t in np.linspace(0, 1, steps)]
        )
    return _finish(image_grid(rows, cell, captions, row_titles=list(methods)), out)


def analogy_grid(
    latents: str | Path | LatentDataset,
    triples: Sequence[tuple[str, str, str]],
    mode: str = "auto",
    out: str | os.PathLike | None = None,
    cell: int = 96,
) -> Image.Image:
    """Rows ``a, b, c, a - b + c`` for each ``(a, b, c)`` triple of ids."""
    renderer = LatentRenderer(latents, mode, cell)
    flat = [i for triple in triples for i in triple]
    z = vectors_for_ids(renderer.ds, flat).reshape(len(triples), 3, -1)
    results, _ = renderer.render(analogy(z[:, 0], z[:, 1], z[:, 2]))
    originals = renderer.source_images(flat)
    rows = [[*originals[3 * r : 3 * r + 3], results[r]] for r in range(len(triples))]
    captions = [["a", "b", "c", "a - b + c"]] * len(triples)
    return _finish(image_grid(rows, cell, captions), out)


def neighbour_grid(
    latents: str | Path | LatentDataset,
    results: pd.DataFrame,
    out: str | os.PathLike | None = None,
    cell: int = 96,
) -> Image.Image:
    """One row per query: the query image (when it is an id or a file), then its neighbours."""
    renderer = LatentRenderer(latents, "neighbors", cell)
    score = "score" if "score" in results.columns else "distance"
    rows, captions, titles = [], [], []
    for query, group in results.sort_values(["query", "rank"]).groupby("query", sort=False):
        query_image = None
        if len(renderer.ds.filter(id=str(query))):
            query_image = renderer.source_images([str(query)])[0]
        elif Path(str(query)).is_file():
            query_image = load_thumbnail(str(query), cell)
        rows.append([query_image, *renderer.source_images(group["id"].astype(str).tolist())])
        captions.append(["query", *[f"{s:.3f}" for s in group[score]]])
        titles.append(str(query))
    return _finish(image_grid(rows, cell, captions, row_titles=titles), out)
