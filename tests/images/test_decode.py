"""One decoder everywhere: an image embeds the same as a corpus file, a query file, or a
PIL image (EXIF orientation, transparency, palette, 16-bit, CMYK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sample_images import make_images

import embedkit
from embedkit.images.decode import EXIF_ORIENTATION, as_rgb, load_image


def asymmetric(size=(48, 32)) -> Image.Image:
    """An image that looks different under every rotation and flip."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    array[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    array[: h // 3, : w // 4] = (250, 250, 20)
    return Image.fromarray(array)


def write_tricky(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    files["exif"] = folder / "rotated.jpg"
    asymmetric().save(files["exif"], quality=95, exif=exif)
    rgba = asymmetric().convert("RGBA")
    alpha = np.zeros((32, 48), np.uint8)
    alpha[:, :24] = 255  # the right half is transparent over saturated colour
    rgba.putalpha(Image.fromarray(alpha))
    files["alpha"] = folder / "transparent.png"
    rgba.save(files["alpha"])
    files["palette"] = folder / "palette.png"
    asymmetric().convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"], transparency=0)
    deep = (np.asarray(asymmetric().convert("L"), np.uint16) * 257)[::-1].copy()
    files["16bit"] = folder / "deep.png"
    Image.fromarray(deep).save(files["16bit"])
    files["cmyk"] = folder / "cmyk.jpg"
    asymmetric().convert("CMYK").save(files["cmyk"], quality=95)
    return files


def test_decoder_handles_each_kind(tmp_path):
    files = write_tricky(tmp_path)
    rotated = load_image(files["exif"])
    assert rotated.mode == "RGB" and rotated.size == (32, 48)  # upright: 90 degrees turned
    transparent = np.asarray(load_image(files["alpha"]))
    assert (transparent[:, 30:] == 255).all()  # transparent areas are white
    deep = np.asarray(load_image(files["16bit"]))
    assert deep.max() > 200 and deep.min() < 50  # scaled, not clipped to white
    assert load_image(files["cmyk"]).mode == "RGB"


def test_every_kind_queried_finds_itself(tmp_path):
    files = write_tricky(tmp_path / "corpus")
    make_images(tmp_path / "corpus", 12)
    embedkit.embed(tmp_path / "corpus", "pixels", tmp_path / "lat", num_workers=0, progress=False)
    queries = list(files.values())
    found = embedkit.neighbors(tmp_path / "lat", images=queries, k=1)
    assert found["id"].tolist() == [path.name for path in queries]
    assert (found["score"] >= 0.999).all(), found
    # a PIL image handed over directly goes through the same decoding
    with Image.open(files["exif"]) as opened:
        direct = embedkit.neighbors(tmp_path / "lat", images=[opened], k=1)
    assert direct["id"].iloc[0] == "rotated.jpg" and direct["score"].iloc[0] >= 0.999


@pytest.mark.parametrize("kind", ["exif", "alpha", "palette"])
def test_as_rgb_matches_load_image(tmp_path, kind):
    path = write_tricky(tmp_path)[kind]
    with Image.open(path) as opened:
        opened.load()
        np.testing.assert_array_equal(np.asarray(as_rgb(opened)), np.asarray(load_image(path)))


def big_jpeg(path: Path, size=(800, 600)) -> Path:
    rng = np.random.default_rng(5)
    base = np.asarray(asymmetric(size), np.float32) + rng.normal(0, 8, (size[1], size[0], 3))
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def test_large_jpegs_decode_at_reduced_scale(tmp_path):
    path = big_jpeg(tmp_path / "big.jpg")
    assert load_image(path).size == (800, 600)
    assert load_image(path, min_side=235).size == (400, 300)  # 1/2: both sides stay >= 235
    assert load_image(path, min_side=32).size == (100, 75)  # 1/8, the most libjpeg does
    assert load_image(path, min_side=400).size == (800, 600)  # 1/2 would be too small
    small = big_jpeg(tmp_path / "small.jpg", (300, 200))  # under twice the size: exact
    np.testing.assert_array_equal(np.asarray(load_image(small, 235)), np.asarray(load_image(small)))
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert load_image(png, min_side=32).size == (800, 600)  # only JPEGs scale when decoded


def test_large_jpeg_query_finds_itself(tmp_path):
    folder = tmp_path / "corpus"
    make_images(folder, 6)
    big_jpeg(folder / "big.jpg")
    embedkit.embed(folder, "pixels", tmp_path / "lat", num_workers=0, progress=False)
    found = embedkit.neighbors(tmp_path / "lat", images=folder / "big.jpg", k=1)
    assert found["id"].iloc[0] == "big.jpg" and found["score"].iloc[0] >= 0.9999
