"""A map of the corpus: 2-D coordinates from :func:`embedkit.algebra.projection.project`,
saved as ``<latents>/maps/<method>.parquet`` (``id, x, y``), and drawn as a PNG scatter
coloured by a label column (with PIL: no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from embedkit.algebra.projection import project
from embedkit.curation.tables import write_frame
from embedkit.errors import InputError
from embedkit.files import atomic_path
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["MAPS_DIR", "check_color_column", "draw_map", "map_colors", "save_map"]

MAPS_DIR = "maps"
#: categorical colours (Tableau 10), then grey for the rest beyond them
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
OTHER = (200, 200, 200)
#: numeric columns: a blue -> green -> yellow ramp (viridis' end points and middle)
RAMP = np.array([(68, 1, 84), (33, 145, 140), (253, 231, 37)], dtype=np.float64)
BACKGROUND, INK = (255, 255, 255), (40, 40, 40)


def save_map(
    latents: str | Path | LatentDataset,
    method: str = "pca",
    sample: int | None = 50_000,
    seed: int = 0,
) -> tuple[pd.DataFrame, Path]:
    """Project the latents to 2-D and write ``<latents>/maps/<method>.parquet``.

    Returns the ``id, x, y`` frame and the path written.

    Example:
        >>> points, path = save_map("latents/", "pca", sample=20_000)
    """
    ds = open_latents(latents)
    points = project(ds, method=method, sample=sample, seed=seed)
    path = write_frame(points, ds.path / MAPS_DIR / f"{method}.parquet")
    return points, path


def check_color_column(latents: str | Path | LatentDataset, column: str) -> LatentDataset:
    """The opened dataset, or a one-line error when it has no carried ``column``."""
    ds = open_latents(latents)
    if column not in ds.columns or column == "id":
        raise InputError(
            f"no column {column!r} in {ds.path} to colour the map by; columns: "
            f"{', '.join(c for c in ds.columns if c != 'id')}"
        )
    return ds


def map_colors(latents: str | Path | LatentDataset, points: pd.DataFrame, column: str) -> pd.Series:
    """The values of the carried ``column`` for each row of ``points`` (joined on id)."""
    ds = check_color_column(latents, column)
    table = ds.to_table(["id", column]).to_pandas().drop_duplicates("id")
    values = table.set_index("id")[column]
    return values.reindex(points["id"].to_numpy()).reset_index(drop=True).rename(column)


def draw_map(
    points: pd.DataFrame,
    out: str | Path,
    colors: pd.Series | None = None,
    size: int = 800,
    title: str = "",
) -> Path:
    """Draw ``points`` (``x, y``) as a PNG scatter; ``colors`` (one value per point)
    colours them: categories get a palette and a legend, numbers a ramp."""
    font = _font()
    legend_w = 170 if colors is not None else 0
    canvas = Image.new("RGB", (size + legend_w, size), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    margin, dot = 30, 2 if len(points) > 5000 else 3
    xy = points[["x", "y"]].to_numpy(dtype=np.float64)
    if len(xy):
        low, span = xy.min(axis=0), np.ptp(xy, axis=0)
        span[span == 0] = 1.0
        pixels = margin + (xy - low) / span * (size - 2 * margin)
        pixels[:, 1] = size - pixels[:, 1]  # y grows upward on a map
        fills, legend = _fills(colors, len(xy))
        for (px, py), fill in zip(pixels, fills, strict=True):
            draw.ellipse((px - dot, py - dot, px + dot, py + dot), fill=fill)
        for row, (label, fill) in enumerate(legend):
            y = margin + 16 * row
            draw.rectangle((size + 8, y + 2, size + 18, y + 12), fill=fill)
            draw.text((size + 24, y), label[:22], fill=INK, font=font)
    draw.text((margin, 8), title or f"{len(points):,} points", fill=INK, font=font)
    out = Path(out)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def _fills(colors: pd.Series | None, n: int) -> tuple[list[tuple], list[tuple[str, tuple]]]:
    """A fill per point and the legend entries ``(text, fill)``."""
    if colors is None:
        return [PALETTE[0]] * n, []
    values = pd.Series(colors).reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and values.nunique() > len(PALETTE):
        low, high = float(values.min()), float(values.max())
        where = ((values.fillna(low) - low) / ((high - low) or 1.0)).to_numpy()
        fills = [_ramp(t) for t in where]
        legend = [(f"{values.name}: {low:.4g}", _ramp(0.0)), (f"{high:.4g}", _ramp(1.0))]
        return fills, legend
    counts = values.astype(str).value_counts()
    shown = list(counts.index[: len(PALETTE)])
    colour_of = {label: PALETTE[i] for i, label in enumerate(shown)}
    fills = [colour_of.get(v, OTHER) for v in values.astype(str)]
    legend = [(f"{label} ({counts[label]:,})", colour_of[label]) for label in shown]
    if len(counts) > len(shown):
        legend.append((f"{len(counts) - len(shown)} more", OTHER))
    return fills, legend


def _ramp(t: float) -> tuple[int, int, int]:
    position = min(max(t, 0.0), 1.0) * (len(RAMP) - 1)
    lo = min(int(position), len(RAMP) - 2)
    mixed = RAMP[lo] + (RAMP[lo + 1] - RAMP[lo]) * (position - lo)
    return tuple(round(float(c)) for c in mixed)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()
