"""Training data: a source (corpus folder, image folder, or paths) -> uint8 tensor in host
memory (pinned when training on CUDA), moved to the device one batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from embedkit.errors import InputError
from embedkit.images.corpus import LABELS, read_labels
from embedkit.images.decode import load_images

__all__ = [
    "IMAGE_SUFFIXES",
    "batch_to_device",
    "host_data",
    "image_paths",
    "load_source",
    "split_indices",
    "to_tensor",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")

Source = str | Path | Sequence[str | Path]


def image_paths(source: Source) -> list[Path]:
    """Resolve a source to image paths.

    ``source`` is a folder holding ``labels.parquet`` (its ``path`` column, relative
    to the folder, as written by ``embedkit corpus shapes``), a ``labels.parquet``
    file, a folder of images (searched recursively, sorted), or a list of paths.
    """
    if not isinstance(source, str | Path):
        paths = [Path(p) for p in source]
        if not paths:
            raise InputError("the training source is an empty list of images")
        return paths
    root = Path(source)
    if root.is_file() and root.suffix == ".parquet":
        root, labels = root.parent, read_labels(root)
        return _from_labels(root, labels)
    if not root.is_dir():
        raise InputError(f"training source {root} does not exist; pass a folder of images")
    if (root / LABELS).is_file():
        return _from_labels(root, read_labels(root))
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}; "
            "make a corpus with `embedkit corpus shapes DIR`"
        )
    return paths


def _from_labels(root: Path, labels) -> list[Path]:
    if "path" not in labels.columns:
        raise InputError(f"{root / LABELS} has no 'path' column; regenerate the corpus")
    return [root / p for p in labels["path"]]


def load_source(source: Source, image_size: int) -> torch.Tensor:
    """Decode every image of ``source`` once, resized: ``uint8 [N, 3, S, S]``."""
    return load_images(image_paths(source), size=image_size)


def host_data(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The images as kept while training: ``uint8`` on the host, never the whole corpus on
    the device; pinned when training on CUDA, so batches copy asynchronously."""
    if device.type != "cuda":
        return images
    try:
        return images.pin_memory()
    except RuntimeError:  # the host could not lock that much memory: pageable copies still work
        return images


def batch_to_device(data: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of host ``data`` (``uint8``) on ``device`` as ``float32`` in ``[0, 1]``.

    The rows are gathered on the host (into pinned memory when ``data`` is pinned: the
    caching host allocator keeps the buffer until the copy is done), copied with
    ``non_blocking=True`` as ``uint8`` (4x fewer bytes) and converted on the device.
    """
    idx = idx.to(data.device)
    if data.is_pinned():
        rows = torch.empty((len(idx), *data.shape[1:]), dtype=data.dtype, pin_memory=True)
        torch.index_select(data, 0, idx, out=rows)
    else:
        rows = data[idx]
    return rows.to(device, non_blocking=True).float().div_(255)


def to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """One PIL image -> ``float32 [3, S, S]`` in ``[0, 1]``, resized as in training."""
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded train/validation split of ``range(n)``: ``(train_idx, val_idx)``."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 1:
        raise InputError(f"{n} images are too few to hold out {val_fraction:.0%} for validation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values
