"""The built-in labeled corpus: procedurally drawn shapes with known attributes.

``make_shapes(out)`` draws ``n`` RGB PNGs (a circle, square or triangle of one
:data:`COLORS` colour, small or large, filled or outlined, near the middle of a
dark, slightly noisy background) under ``out/images/`` and writes
``out/labels.parquet`` with one row per image: ``id, path`` (relative to ``out``),
``shape, color, size`` (small/large), ``scale`` (centre-to-corner radius as a
fraction of the side), ``x, y`` (centre, fractions of the side) and ``filled``.
The same seed gives the same images and labels; re-running on a complete folder
returns at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from embedkit.errors import InputError
from embedkit.files import atomic_path

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "color_of",
    "make_shapes",
    "read_labels",
]

SHAPES = ("circle", "square", "triangle")
# Four well-separated colours. Hues sharing a strong channel with these (magenta,
# cyan) proved hard to tell apart in the latents of a small autoencoder.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
# Shape "radius" (centre to corner) as a fraction of the image side, per size class.
SIZES: dict[str, tuple[float, float]] = {"small": (0.18, 0.23), "large": (0.28, 0.34)}
JITTER = 0.15  # centres lie within this of the middle: x, y in [0.35, 0.65]
SQUARE = 0.85  # half side of a square relative to its radius
OUTLINE = 0.08  # outline width of unfilled shapes (fraction of the side), at most
OUTLINE_HOLE = 0.45  # this fraction of the inner radius, so small triangles stay hollow
INNER_RADIUS = {"circle": 1.0, "square": SQUARE, "triangle": 0.5}  # relative to the radius
BACKGROUND = (28, 28, 32)
NOISE_STD = 4.0
SUPERSAMPLE = 4
LABELS = "labels.parquet"
META_KEY = b"embedkit.corpus"
VERSION = 1  # bump whenever drawing changes: complete folders are then redrawn


def make_shapes(out_dir: str | Path, n: int = 5000, size: int = 64, seed: int = 0) -> Path:
    """Draw the shapes corpus into ``out_dir`` and return the path of its labels.parquet.

    Args:
        out_dir: folder to write ``images/NNNNN.png`` and ``labels.parquet`` into.
        n: number of images.
        size: image side in pixels (square RGB images).
        seed: the same seed gives byte-identical images and identical labels.
    """
    if n < 1 or size < 16:
        raise InputError(f"make_shapes needs n >= 1 and size >= 16 (got n={n}, size={size})")
    out = Path(out_dir)
    labels_path = out / LABELS
    params = {
        "kind": "shapes",
        "n": int(n),
        "size": int(size),
        "seed": int(seed),
        "version": VERSION,
    }
    stored = _stored_params(labels_path)
    if stored == params and _images_present(out, n):
        return labels_path
    if labels_path.is_file() and stored is None:
        raise InputError(
            f"{labels_path} was not written by make_shapes; choose a new or empty folder"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels_path.unlink(missing_ok=True)  # an interrupted rerun must not look complete
    labels = _sample_labels(n, seed)
    for row in labels.itertuples(index=False):
        image = _draw(row, size, seed)
        _save_png_atomic(image, out / row.path)
    table = pa.Table.from_pandas(labels, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), META_KEY: json.dumps(params).encode()}
    )
    with atomic_path(labels_path) as tmp:
        pq.write_table(table, tmp)
    return labels_path


def _stored_params(labels_path: Path) -> dict | None:
    """The parameters a previous make_shapes stored in ``labels_path`` (None: not ours)."""
    if not labels_path.is_file():
        return None
    try:
        meta = pq.read_schema(labels_path).metadata or {}
        return json.loads(meta[META_KEY]) if META_KEY in meta else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def _images_present(out: Path, n: int) -> bool:
    return all((out / "images" / f"{i:05d}.png").is_file() for i in range(n))


def _sample_labels(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shape = rng.integers(0, len(SHAPES), n)
    color = rng.integers(0, len(COLORS), n)
    large = rng.random(n) < 0.5
    filled = rng.random(n) < 0.5
    lo = np.where(large, SIZES["large"][0], SIZES["small"][0])
    hi = np.where(large, SIZES["large"][1], SIZES["small"][1])
    scale = lo + (hi - lo) * rng.random(n)
    reach = np.minimum(JITTER, 0.5 - scale - 0.02)  # keep every shape inside the frame
    x = 0.5 + reach * (2 * rng.random(n) - 1)
    y = 0.5 + reach * (2 * rng.random(n) - 1)
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "path": [f"images/{i:05d}.png" for i in range(n)],
            "shape": np.array(SHAPES)[shape],
            "color": np.array(list(COLORS))[color],
            "size": np.where(large, "large", "small"),
            "scale": scale.round(4),
            "x": x.round(4),
            "y": y.round(4),
            "filled": filled,
        }
    )


def _draw(row, size: int, seed: int) -> Image.Image:
    """Draw one labelled shape, supersampled then downscaled for smooth edges."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = row.x * big, row.y * big, row.scale * big
    fill = COLORS[row.color] if row.filled else None
    thickness = min(OUTLINE * big, OUTLINE_HOLE * INNER_RADIUS[row.shape] * r)
    width = 0 if row.filled else max(SUPERSAMPLE, round(thickness))
    outline = COLORS[row.color]
    if row.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif row.shape == "square":
        h = SQUARE * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill, outline=outline, width=width)
    else:
        points = [
            (cx + r * np.cos(a), cy - r * np.sin(a)) for a in np.deg2rad([90.0, 210.0, 330.0])
        ]
        draw.polygon(points, fill=fill, outline=outline, width=width)
    small = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    noise = np.random.default_rng([seed, int(row.id)]).normal(0.0, NOISE_STD, small.shape)
    return Image.fromarray(np.clip(small + noise, 0, 255).round().astype(np.uint8))


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def read_labels(root: str | Path) -> pd.DataFrame:
    """Read ``root/labels.parquet`` (as written by :func:`make_shapes`)."""
    path = Path(root)
    path = path if path.suffix == ".parquet" else path / LABELS
    if not path.is_file():
        raise InputError(
            f"{path} does not exist; create the corpus with `embedkit corpus shapes {path.parent}`"
        )
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(
            f"{path} is not a readable parquet file ({type(exc).__name__}); delete it and rerun "
            "`embedkit corpus shapes`"
        ) from exc


def color_of(image: Image.Image | np.ndarray, threshold: float = 0.25) -> str:
    """The palette colour of the shape in an image (e.g. a decoded latent), or ``"none"``.

    Anti-aliased or blurry pixels mix the colour with the background linearly, so the
    direction of the mean (pixel - background) is compared with each (colour - background).
    ``image`` is a PIL image or an ``[H, W, 3]`` array in [0, 1].
    """
    pixels = (
        np.asarray(image.convert("RGB"), np.float32) / 255
        if isinstance(image, Image.Image)
        else np.asarray(image, np.float32)
    )
    background = np.asarray(BACKGROUND, np.float32) / 255
    shape = np.linalg.norm(pixels - background, axis=-1) > threshold
    if not shape.any():
        return "none"
    palette = np.asarray(list(COLORS.values()), np.float32) / 255 - background
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    return list(COLORS)[int(np.argmax(palette @ (pixels[shape].mean(0) - background)))]
