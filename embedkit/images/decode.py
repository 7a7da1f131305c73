"""The one image decoder: every image embedkit reads (corpus, query, training, report)
goes through :func:`load_image`, so a photo embeds the same wherever it comes from (a
local file, or a URI on object storage, fetched whole through ``pyarrow.fs``)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from embedkit.errors import InputError
from embedkit.location import RemotePath, is_uri, locate

if TYPE_CHECKING:
    import torch

__all__ = ["EXIF_ORIENTATION", "as_rgb", "load_image", "load_image_resized", "load_images"]

EXIF_ORIENTATION = 0x0112


def load_image(path: str | os.PathLike | RemotePath, min_side: int | None = None) -> Image.Image:
    """Open an image as RGB, honouring EXIF orientation; transparent areas become white.

    Args:
        path: the image file, or its URI (``s3://bucket/photos/a.jpg``).
        min_side: the fewest pixels a side must keep (a backbone's ``decode_size``): a
            JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
            DCT scaling, far less work) while both sides stay >= ``min_side``. Images
            below twice that size decode exactly as without it.

    Raises ``OSError``/``ValueError`` subclasses for unreadable files (callers record them).
    """
    if is_uri(path) or isinstance(path, RemotePath):
        found = locate(path)  # one request for a remote file; PIL then seeks in memory
        path = io.BytesIO(found.read_bytes()) if isinstance(found, RemotePath) else found
    image = Image.open(path)
    try:
        if min_side and image.format == "JPEG":
            image.draft(None, (min_side, min_side))
        image.load()  # decode now so truncated files fail here, not later
        converted = as_rgb(image)
    except BaseException:
        image.close()
        raise
    if converted is not image:
        image.close()  # multi-frame files keep their file open until closed
    return converted  # the common case is no copy: load() has released the file already


def as_rgb(image: Image.Image) -> Image.Image:
    """An opened image as upright RGB, as :func:`load_image` makes it: EXIF rotation
    applied, transparency composited onto white, 16-bit samples scaled, palette, CMYK
    and grey converted. Returns ``image`` itself when it is upright RGB already."""
    if getattr(image, "n_frames", 1) > 1 or image.mode != "RGB":
        return _to_rgb(image)
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        # 16-bit samples: convert() would clip them to 255 (a white image); scale to 8 bits
        image = image.convert("I").point(lambda v: v / 257).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image_resized(path: str | os.PathLike, size: int | None) -> Image.Image:
    """:func:`load_image`, then resized to ``size`` x ``size`` (bilinear) unless None."""
    image = load_image(path, min_side=size)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image


def load_images(paths: Sequence[str | Path], size: int | None = None) -> torch.Tensor:
    """Decode images once into a ``uint8`` tensor ``[N, 3, S, S]`` (resized to ``size``).

    Raises :class:`InputError` naming the first unreadable image or the first whose
    size differs from the others (pass ``size`` to resize them all).
    """
    import torch  # only training needs a tensor; importing this module stays cheap

    if not paths:
        raise InputError("load_images got no image paths")
    first = _rgb_array(paths[0], size)
    height, width = first.shape[:2]
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        array = _rgb_array(path, size)
        if array.shape != out.shape[1:]:
            raise InputError(
                f"image {path} is {array.shape[1]}x{array.shape[0]}, others are "
                f"{width}x{height}; pass size= to resize them all"
            )
        out[i] = array
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _rgb_array(path: str | Path, size: int | None) -> np.ndarray:
    try:
        return np.asarray(load_image_resized(path, size), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from exc
