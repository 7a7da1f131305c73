"""Image grids: layout arithmetic, grey placeholders, captions, atomic PNG saves, thumbnails."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedkit.viz.grid import BACKGROUND, MISSING, image_grid, load_thumbnail, save_png


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


RED, BLUE = (200, 10, 10), (10, 10, 200)


@pytest.mark.parametrize(
    ("nrows", "ncols", "cell", "pad", "captions", "titles"),
    [
        (2, 3, 32, 4, False, False),
        (1, 5, 20, 0, False, False),
        (3, 2, 48, 6, True, False),
        (2, 2, 40, 2, True, True),
    ],
)
def test_grid_dimensions(nrows, ncols, cell, pad, captions, titles):
    rows = [[solid(RED)] * ncols for _ in range(nrows)]
    grid = image_grid(
        rows,
        cell=cell,
        pad=pad,
        captions=[["c"] * ncols for _ in range(nrows)] if captions else None,
        row_titles=[f"row {r}" for r in range(nrows)] if titles else None,
    )
    caption_h = 14 if captions else 0
    title_w = 110 if titles else 0
    assert grid.mode == "RGB"
    assert grid.size == (
        title_w + ncols * (cell + pad) + pad,
        nrows * (cell + caption_h + pad) + pad,
    )


def cell_centre(r: int, c: int, cell: int = 32, pad: int = 4, caption_h: int = 0, title_w=0):
    return (
        title_w + pad + c * (cell + pad) + cell // 2,
        pad + r * (cell + caption_h + pad) + cell // 2,
    )


def test_cells_hold_their_images_and_none_is_grey():
    grid = image_grid([[solid(RED), None], [None, solid(BLUE)]], cell=32, pad=4)
    assert grid.getpixel(cell_centre(0, 0)) == RED
    assert grid.getpixel(cell_centre(0, 1)) == MISSING
    assert grid.getpixel(cell_centre(1, 0)) == MISSING
    assert grid.getpixel(cell_centre(1, 1)) == BLUE
    # the whole None cell is grey, and the padding around it is background
    pixels = np.asarray(grid)
    np.testing.assert_array_equal(pixels[40:72, 4:36], np.full((32, 32, 3), MISSING))
    assert tuple(pixels[0, 0]) == BACKGROUND and tuple(pixels[38, 20]) == BACKGROUND


def test_images_are_scaled_to_the_cell_keeping_aspect():
    wide = solid(RED, size=(16, 8))  # upscaled 2x -> 32 x 16, centred vertically
    tall = solid(BLUE, size=(100, 200))  # downscaled -> 16 x 32, centred horizontally
    grid = np.asarray(image_grid([[wide, tall]], cell=32, pad=4))
    x0, y0 = 4, 4
    assert (grid[y0 + 8 : y0 + 24, x0 : x0 + 32] == RED).all()
    assert (grid[y0 : y0 + 8, x0 : x0 + 32] == BACKGROUND).all()
    x1 = 4 + 36
    assert (grid[y0 : y0 + 32, x1 + 8 : x1 + 24] == BLUE).all()
    assert (grid[y0 : y0 + 32, x1 : x1 + 8] == BACKGROUND).all()


def test_non_rgb_images_are_converted():
    grey = Image.new("L", (32, 32), 128)
    rgba = Image.new("RGBA", (32, 32), (0, 255, 0, 255))
    grid = image_grid([[grey, rgba]], cell=32, pad=4)
    assert grid.getpixel(cell_centre(0, 0)) == (128, 128, 128)
    assert grid.getpixel(cell_centre(0, 1)) == (0, 255, 0)


def test_ragged_rows_and_empty_grid():
    grid = image_grid([[solid(RED)], [solid(RED), solid(BLUE), None]], cell=10, pad=2)
    assert grid.size == (3 * 12 + 2, 2 * 12 + 2)
    assert grid.getpixel(cell_centre(0, 1, cell=10, pad=2)) == BACKGROUND  # no cell there
    assert grid.getpixel(cell_centre(1, 2, cell=10, pad=2)) == MISSING
    assert image_grid([]).size[0] >= 1


def test_long_captions_and_titles_fit_their_cells():
    long = "an extremely long caption " * 20
    start = time.perf_counter()
    grid = image_grid(
        [[solid(RED), None], [None, solid(BLUE)]],
        cell=48,
        pad=4,
        captions=[[long, "ok"], ["", long + "ü…☃"]],
        row_titles=[long, "short"],
    )
    assert time.perf_counter() - start < 5
    pixels = np.asarray(grid)
    # captions are drawn: dark text below the cells of the first row
    caption_band = pixels[4 + 48 : 4 + 48 + 14, 110 + 4 : 110 + 52]
    assert (caption_band.sum(-1) < 300).any()
    # nothing spills past the right edge of the last column (the final padding stays white)
    assert (pixels[:, -3:] == BACKGROUND).all()
    assert grid.getpixel(cell_centre(0, 0, cell=48, caption_h=14, title_w=110)) == RED


def test_missing_captions_for_some_cells_are_fine():
    grid = image_grid([[solid(RED), solid(BLUE)]], captions=[["only one"]], cell=32)
    assert grid.size == (2 * 36 + 4, 32 + 14 + 8)


def test_save_png_is_atomic_and_readable(tmp_path):
    image = image_grid([[solid(RED), None]], cell=16, pad=2)
    path = save_png(image, tmp_path / "out" / "grid.png")
    assert path == tmp_path / "out" / "grid.png"
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        assert reopened.size == image.size
        np.testing.assert_array_equal(np.asarray(reopened.convert("RGB")), np.asarray(image))
    # overwriting replaces the file in one step
    save_png(solid(BLUE, (5, 5)), path)
    with Image.open(path) as reopened:
        assert reopened.size == (5, 5)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_load_thumbnail(tmp_path: Path):
    good = tmp_path / "good.png"
    solid(RED, (120, 60)).save(good)
    thumb = load_thumbnail(good, 32)
    assert thumb is not None and thumb.size == (32, 16) and thumb.mode == "RGB"
    small = tmp_path / "small.png"
    solid(RED, (10, 20)).save(small)
    assert load_thumbnail(small, 32).size == (10, 20)  # never enlarged

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert load_thumbnail(bad, 32) is None
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    assert load_thumbnail(truncated, 32) is None
    assert load_thumbnail(tmp_path / "missing.png", 32) is None
    # a grid shows the unreadable one as a grey cell
    grid = image_grid([[load_thumbnail(good, 32), load_thumbnail(bad, 32)]], cell=32, pad=4)
    assert grid.getpixel(cell_centre(0, 1)) == MISSING
