"""Search queries as vectors: latent ids, arrays, ``.npy`` files or images (encoded with
the backbone that made the latents, decoded by the one image decoder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.store.dataset import LatentDataset

__all__ = ["IMAGE_BATCH", "as_list", "image_vectors", "load_vector_file", "query_vectors"]

IMAGE_BATCH = 32


def as_list(value: Any) -> list:
    """One value (a str or Path counts as one) or a sequence -> a list."""
    if isinstance(value, (str, Path)) or not isinstance(value, Sequence | np.ndarray | pd.Series):
        return [value]
    return list(value)


def query_vectors(vectors: Any, dim: int) -> np.ndarray:
    """``[D]`` or ``[N, D]`` finite numbers -> ``[N, D]`` float32, or a one-line error."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"query vectors are not numeric ({exc}); pass a [D] or [N, D] array"
        ) from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise InputError(
            f"query vectors have shape {np.shape(vectors)}; pass one [{dim}] or [N, {dim}] array"
        )
    if array.shape[1] != dim:
        raise InputError(
            f"query vectors have dim {array.shape[1]} but the latents have dim {dim}; "
            "encode them with the same backbone"
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise InputError(
            f"query vector {int(np.flatnonzero(bad)[0])} holds NaN or inf values; "
            "pass finite vectors"
        )
    return array


def load_vector_file(path: str | Path) -> np.ndarray:
    """Query vectors from a ``.npy`` file (``[D]`` or ``[N, D]``), for the CLI."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"vector file {path} does not exist; pass a .npy file") from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read {path} as a .npy array ({exc}); save it with numpy.save"
        ) from None


def image_vectors(ds: LatentDataset, images: list) -> tuple[np.ndarray, list]:
    """Encode image files (or PIL images) with the backbone recorded in the latents."""
    from PIL import Image, UnidentifiedImageError

    from embedkit.images.decode import as_rgb, load_image
    from embedkit.plugins.registry import load_backbone

    backbone = load_backbone(ds.backbone)
    pil: list[Image.Image] = []
    labels: list = []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            pil.append(as_rgb(item))
            labels.append(i)
            continue
        try:
            pil.append(load_image(item, backbone.decode_size))
        except (FileNotFoundError, IsADirectoryError):
            raise InputError(f"image {item} does not exist; pass an existing image file") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(
                f"cannot open image {item} ({type(exc).__name__}); pass a PNG/JPEG/... file"
            ) from None
        labels.append(str(item))
    parts = [
        backbone.encode_images(pil[i : i + IMAGE_BATCH]).numpy()
        for i in range(0, len(pil), IMAGE_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32), labels
