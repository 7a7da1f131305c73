"""Image helpers shared by the embedding tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from embedkit_pixels import PixelsBackbone
from PIL import Image

from embedkit import load_image


def make_images(folder: Path, n: int, start: int = 0, size: int = 32) -> list[Path]:
    """``n`` random RGB PNGs ``img_XXXX.png`` (deterministic per index)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        path = folder / f"img_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def expected_vectors(paths: list[Path], **options) -> np.ndarray:
    """What the pixels backbone gives each image, computed without the pipeline."""
    backbone = PixelsBackbone(device="cpu", **options)
    return backbone.encode_images([load_image(p) for p in paths]).numpy()


#: a VAE small enough to train in seconds (tests of the training loop, not of quality)
TINY_VAE = {
    "image_size": 32,
    "channels": (8, 16, 32),
    "latent_dim": 4,
    "batch_size": 16,
    "progress": False,
}
