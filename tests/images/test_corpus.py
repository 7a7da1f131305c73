"""The built-in shapes corpus: determinism, layout, resumability, and visible attributes."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from embedkit.errors import InputError
from embedkit.images.corpus import BACKGROUND, COLORS, SHAPES, make_shapes, read_labels
from embedkit.images.decode import load_images

N = 240
SIZE = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=N, size=SIZE, seed=3)
    labels = read_labels(root)
    images = load_images([root / p for p in labels["path"]]).permute(0, 2, 3, 1).numpy()
    return root, labels, images.astype(np.float32)


def _shape_mask(images: np.ndarray) -> np.ndarray:
    """Pixels clearly away from the background colour (noise std is 4)."""
    return np.linalg.norm(images - np.array(BACKGROUND, np.float32), axis=-1) > 60


def test_labels_layout(corpus):
    root, labels, images = corpus
    assert list(labels.columns) == [
        "id",
        "path",
        "shape",
        "color",
        "size",
        "scale",
        "x",
        "y",
        "filled",
    ]
    assert len(labels) == N and labels["id"].tolist() == list(range(N))
    assert labels["filled"].dtype == bool
    assert set(labels["shape"]) == set(SHAPES)
    assert set(labels["color"]) == set(COLORS)
    assert set(labels["size"]) == {"small", "large"}
    assert labels["x"].between(0, 1).all() and labels["y"].between(0, 1).all()
    assert images.shape == (N, SIZE, SIZE, 3)
    files = sorted(p.name for p in (root / "images").iterdir())
    assert files == [f"{i:05d}.png" for i in range(N)]  # no temp files left behind
    with Image.open(root / labels["path"][0]) as im:
        assert im.mode == "RGB" and im.size == (SIZE, SIZE)


def test_same_seed_same_bytes(tmp_path, corpus):
    root, labels, _ = corpus
    again = tmp_path / "again"
    make_shapes(again, n=N, size=SIZE, seed=3)
    pd.testing.assert_frame_equal(read_labels(again), labels)
    for rel in labels["path"][:40]:
        assert (again / rel).read_bytes() == (root / rel).read_bytes()
    other = make_shapes(tmp_path / "other", n=N, size=SIZE, seed=4)
    assert not read_labels(other).equals(labels)


def test_rerun_skips_complete_folder_and_redoes_changed(tmp_path):
    labels_path = make_shapes(tmp_path, n=30, size=32, seed=0)
    stamp = labels_path.stat().st_mtime_ns
    started = time.perf_counter()
    assert make_shapes(tmp_path, n=30, size=32, seed=0) == labels_path
    assert time.perf_counter() - started < 0.5
    assert labels_path.stat().st_mtime_ns == stamp  # untouched
    (tmp_path / "images" / "00007.png").unlink()  # incomplete -> redrawn
    make_shapes(tmp_path, n=30, size=32, seed=0)
    assert (tmp_path / "images" / "00007.png").is_file()
    make_shapes(tmp_path, n=30, size=32, seed=1)  # other params -> regenerated
    assert not read_labels(tmp_path).equals(read_labels(make_shapes(tmp_path / "s0", 30, 32, 0)))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_generation_is_fast(tmp_path):
    started = time.perf_counter()
    make_shapes(tmp_path, n=500, size=64, seed=0)
    # 5000 images take a few seconds; leave room for a busy machine.
    assert time.perf_counter() - started < 10


def test_colour_is_visible(corpus):
    """The mean shape pixel, minus background, points towards the labelled colour."""
    _, labels, images = corpus
    mask = _shape_mask(images)
    names = list(COLORS)
    palette = np.array(list(COLORS.values()), np.float32) - np.array(BACKGROUND, np.float32)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    for image, m, color in zip(images, mask, labels["color"], strict=True):
        mean = image[m].mean(0) - np.array(BACKGROUND, np.float32)
        assert names[int(np.argmax(palette @ mean))] == color
    red = images[(labels["color"] == "red").to_numpy()]
    red_pixels = red[_shape_mask(red)]
    assert (red_pixels[:, 0] > 2 * red_pixels[:, 1]).mean() > 0.95


def test_filled_size_position_and_shape_are_visible(corpus):
    _, labels, images = corpus
    mask = _shape_mask(images)
    area = mask.mean(axis=(1, 2))
    filled = labels["filled"].to_numpy()
    large = (labels["size"] == "large").to_numpy()
    for group in (large, ~large):
        assert area[group & filled].mean() > 1.25 * area[group & ~filled].mean()
    assert area[large & filled].mean() > 1.8 * area[~large & filled].mean()
    # an outline leaves the centre pixel empty, a filled shape covers it
    col = np.floor(labels["x"].to_numpy() * SIZE).astype(int)
    row = np.floor(labels["y"].to_numpy() * SIZE).astype(int)
    assert (mask[np.arange(N), row, col] == filled).all()
    # the centre of the shape pixels is the labelled centre (triangles: centroid = centre)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    for image_mask, x, y in zip(
        mask[filled], labels["x"][filled], labels["y"][filled], strict=True
    ):
        cx, cy = xs[image_mask].mean() / SIZE, ys[image_mask].mean() / SIZE
        assert abs(cx - x) < 0.04 and abs(cy - y) < 0.04
    # area relative to scale^2 orders the filled shapes: triangle < square < circle
    relative = area / labels["scale"].to_numpy() ** 2
    by_shape = {s: relative[filled & (labels["shape"] == s).to_numpy()].mean() for s in SHAPES}
    assert by_shape["triangle"] < 0.7 * by_shape["square"]
    assert by_shape["square"] < 0.97 * by_shape["circle"]  # 2.89 r^2 vs pi r^2


def test_load_images_resizes(corpus):
    root, labels, _ = corpus
    batch = load_images([root / p for p in labels["path"][:5]], size=32)
    assert batch.shape == (5, 3, 32, 32) and str(batch.dtype) == "torch.uint8"


def test_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="embedkit corpus shapes") as info:
        read_labels(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="cannot read image"):
        load_images([tmp_path / "missing.png"])
    with pytest.raises(InputError):
        make_shapes(tmp_path, n=0)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    pd.DataFrame({"path": ["a.png"]}).to_parquet(foreign / "labels.parquet")
    with pytest.raises(InputError, match="not written by make_shapes"):
        make_shapes(foreign, n=5)  # never overwrite someone else's labels
    assert len(pd.read_parquet(foreign / "labels.parquet")) == 1


def test_cli_command(tmp_path):
    from embedkit.cli import get_cli

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        get_cli(), ["corpus", "shapes", str(out), "--n", "12", "--size", "32", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "labels.parquet" in result.output
    assert len(read_labels(out)) == 12
    assert os.path.getsize(out / "images" / "00011.png") > 0
