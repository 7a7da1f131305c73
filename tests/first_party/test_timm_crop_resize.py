"""The fused resize-and-crop gives torchvision's Resize + CenterCrop pixels."""

from __future__ import annotations

import numpy as np
import pytest
from embedkit_timm.crop_resize import CropResize, fuse
from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Resize


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: photo-like content with edges everywhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 97 * 2.6], axis=-1)
    noisy = base + rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("height", "width"),
    [(600, 800), (800, 600), (411, 287), (300, 400), (235, 235), (150, 200), (1080, 1920)],
)
@pytest.mark.parametrize("size", [235, 256])
def test_crop_resize_matches_resize_then_center_crop(height, width, size):
    image = photo(height, width, seed=height + width)
    want = np.asarray(CenterCrop(224)(Resize(size, InterpolationMode.BICUBIC)(image)), int)
    fused = fuse([Resize(size, InterpolationMode.BICUBIC), CenterCrop(224)])
    got = np.asarray(fused(image), int)
    assert got.shape == want.shape == (224, 224, 3)
    diff = np.abs(got - want)
    assert diff.max() <= 2  # a 1 rounded differently in the first pass can become 2
    assert (diff > 0).mean() < 0.005


def test_fuse_only_takes_what_it_reproduces():
    bicubic = InterpolationMode.BICUBIC
    assert isinstance(fuse([Resize(235, bicubic), CenterCrop(224)]), CropResize)
    assert fuse([Resize((235, 300), bicubic), CenterCrop(224)]) is None  # fixed shape
    assert fuse([Resize(235, bicubic, max_size=240), CenterCrop(224)]) is None
    assert fuse([Resize(200, bicubic), CenterCrop(224)]) is None  # the crop would pad
    assert fuse([CenterCrop(224), Resize(235, bicubic)]) is None  # other order
    assert fuse([Resize(235, bicubic)]) is None


def test_timm_backbone_uses_the_fused_step():
    import embedkit

    with pytest.warns(UserWarning, match="random weights"):
        backbone = embedkit.load_backbone("timm/resnet18", device="cpu", pretrained=False)
    assert isinstance(backbone.pil_ops, CropResize)
    assert (backbone.pil_ops.size, backbone.pil_ops.crop) == (235, (224, 224))
