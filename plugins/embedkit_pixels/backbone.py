"""PixelsBackbone: downsampled raw pixels, a fast baseline encoder with no weights."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from embedkit.plugins.backbone import Backbone
from embedkit.plugins.info import BackboneInfo

__all__ = ["PixelsBackbone"]


class PixelsBackbone(Backbone):
    """Resize to ``size`` x ``size`` and flatten the RGB values in [0, 1]; dim = 3 * size**2."""

    def __init__(self, size: int = 8, device: str | None = None):
        super().__init__(device=device)
        self.size = int(size)
        # a JPEG is decoded at 1/8 scale or less only while it keeps 4x the pixels it is
        # resized to: the bilinear resize still averages over several decoded pixels
        self.decode_size = 4 * self.size
        self._info = BackboneInfo(name="pixels", dim=3 * self.size**2, config={"size": self.size})

    @property
    def info(self) -> BackboneInfo:
        return self._info

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """uint8 ``[3, size, size]``: :meth:`finish_preprocess` scales it to [0, 1]."""
        small = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return pil_to_tensor(small)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1)
