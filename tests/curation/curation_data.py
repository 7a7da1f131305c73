"""Shared pieces of the curation tests' corpora: planted copies, out-of-distribution
images, and subsets of an embedded dataset with changed columns."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from embedkit import open_latents, write_latents

N = 1000
SIZE = 64
COPIES = 60  # 20 exact, 20 JPEG q70, 20 resized (10 up to 96 px, 10 down to 48 px)
ODD = 20  # 10 noise images, 10 shapes the corpus never draws


def plant_copies(root: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """Copies of ``COPIES`` distinct originals; their rows (``dup_of``: the original's id)."""
    rng = np.random.default_rng(1)
    rows = []
    for j, original in enumerate(rng.choice(N, COPIES, replace=False)):
        source = root / labels.path[original]
        kind = ("exact", "jpeg", "resized")[j % 3]
        path = Path("copies") / f"{j:03d}_{kind}.{'jpg' if kind == 'jpeg' else 'png'}"
        (root / path).parent.mkdir(exist_ok=True)
        image = Image.open(source).convert("RGB")
        if kind == "exact":
            shutil.copyfile(source, root / path)
        elif kind == "jpeg":
            image.save(root / path, quality=70)
        else:
            side = SIZE * 3 // 2 if j % 2 else SIZE * 3 // 4
            image.resize((side, side), Image.Resampling.BICUBIC).save(root / path)
        row = labels.iloc[original].to_dict()
        rows.append({**row, "id": N + j, "path": str(path), "dup_of": int(original), "kind": kind})
    return pd.DataFrame(rows)


def odd_image(kind: str, rng: np.random.Generator) -> Image.Image:
    """One image unlike the corpus (circles, squares, triangles in four colours on dark
    grey) and unlike the other odd ones: its own background, ink and figure."""
    if kind == "noise":
        blotches = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        return Image.fromarray(blotches).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    background, ink = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw, (x, y) = ImageDraw.Draw(image), SIZE / 2 + rng.uniform(-12, 12, 2)
    if kind == "cross":
        draw.rectangle((x - 26, y - 5, x + 26, y + 5), fill=ink)
        draw.rectangle((x - 5, y - 26, x + 5, y + 26), fill=ink)
    elif kind == "star":
        angles, radii = np.linspace(0, 2 * np.pi, 10, endpoint=False), np.tile([26, 10], 5)
        points = np.column_stack([x + radii * np.cos(angles), y + radii * np.sin(angles)])
        draw.polygon([tuple(p) for p in points], fill=ink)
    else:  # stripes
        for left in range(0, SIZE, 16):
            draw.rectangle((left, 0, left + 7, SIZE), fill=ink)
    return image


def draw_odd(root: Path) -> pd.DataFrame:
    """``ODD`` out-of-distribution images under ``root/odd/``; their rows."""
    rng = np.random.default_rng(2)
    (root / "odd").mkdir(exist_ok=True)
    rows = []
    for j in range(ODD):
        kind = ("noise", "cross", "star", "stripes")[j % 4]
        odd_image(kind, rng).save(root / "odd" / f"{j:02d}.png")
        rows.append({"id": 2 * N + j, "path": f"odd/{j:02d}.png", "kind": kind})
    return pd.DataFrame(rows)


def subset(everything: Path, out: Path, keep, **columns) -> Path:
    """A dataset of the rows of ``everything`` where ``keep(table)`` holds, with its
    carried columns (replaced or added by ``columns``: name -> function of the table)."""
    ds = open_latents(everything)
    table = ds.to_pandas(embedding=False)
    mask = keep(table).to_numpy()
    vectors = ds.to_numpy()[mask]
    table = table[mask].reset_index(drop=True)
    for name, make in columns.items():
        table[name] = make(table)
    carried = table.drop(columns=["id", "source"])
    return write_latents(out, table["id"], vectors, ds.backbone, columns=carried)
