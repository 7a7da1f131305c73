"""Resize-then-centre-crop as one PIL resize of the crop's box.

timm's eval transforms start with ``Resize(short side)`` and ``CenterCrop``: the resize
computes every pixel of the resized image (313x235 for a 4:3 photo into resnet18), and the
crop then throws a third of them away. PIL can resample just a box of the source, so
:class:`CropResize` computes only the columns that are kept: the same filter at the same
source positions, up to float rounding of those positions (values differ by 1 in 255 in
0.01-0.1 % of the pixels, rarely by 2 where the second pass magnifies a first-pass 1).
:func:`fuse` builds it from the transform's steps, and the backbone keeps it only after
checking it against them.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Resize

__all__ = ["CropResize", "fuse"]

PIL_FILTERS = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


class CropResize:
    """Resize the shorter side to ``size`` (torchvision's rule for the longer side), then
    crop ``crop`` (height, width) from the centre: computed as one resize of a box."""

    def __init__(self, size: int, crop: tuple[int, int], resample: Image.Resampling):
        self.size = size
        self.crop = crop
        self.resample = resample

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width <= height:
            new_w, new_h = self.size, int(self.size * height / width)
        else:
            new_w, new_h = int(self.size * width / height), self.size
        crop_h, crop_w = self.crop
        left = round((new_w - crop_w) / 2.0)
        top = round((new_h - crop_h) / 2.0)
        scale_x = width / new_w
        box = (left * scale_x, 0, (left + crop_w) * scale_x, height)
        # a box offset in y beyond ~30 rows changes PIL's vertical pass (measured, Pillow
        # 13), so only the columns are boxed and the rows are cropped after
        columns = image.resize((crop_w, new_h), self.resample, box=box)
        return columns.crop((0, top, crop_w, top + crop_h))

    def __repr__(self) -> str:
        return f"CropResize(size={self.size}, crop={self.crop}, resample={self.resample.name})"


def fuse(steps: Sequence[object]) -> CropResize | None:
    """A :class:`CropResize` doing ``steps`` when they are exactly ``Resize(int)`` with a
    PIL filter and no ``max_size``, then a ``CenterCrop`` no larger than the resized image."""
    if len(steps) != 2 or type(steps[0]) is not Resize or type(steps[1]) is not CenterCrop:
        return None
    resize, crop = steps
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) else resize.size
    one_side = isinstance(resize.size, int) or len(resize.size) == 1
    if not one_side or resize.max_size is not None or resize.interpolation not in PIL_FILTERS:
        return None
    crop_h, crop_w = crop.size
    if crop_h > size or crop_w > size:
        return None  # the crop would pad: leave it to torchvision
    return CropResize(int(size), (int(crop_h), int(crop_w)), PIL_FILTERS[resize.interpolation])
