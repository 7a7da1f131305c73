"""A self-contained HTML report: sections of text, tables, inline PNG images and SVG plots."""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedkit.files import atomic_path

__all__ = ["Report", "pca_2d", "scatter_svg"]

PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#469990",
    "#9a6324",
    "#800000",
    "#808000",
    "#000075",
    "#a9a9a9",
)
# labels that name a colour are drawn in that colour (a "red" class in red)
NAMED_COLOURS = {
    "red": "#e6194b",
    "green": "#3cb44b",
    "blue": "#4363d8",
    "yellow": "#e6c619",
    "magenta": "#f032e6",
    "cyan": "#42d4f4",
    "orange": "#f58231",
    "purple": "#911eb4",
    "black": "#222222",
    "gray": "#a9a9a9",
    "grey": "#a9a9a9",
}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
figure{margin:.8rem 0} figcaption{color:#555;font-size:.9rem}
img{max-width:100%;image-rendering:pixelated;border:1px solid #eee}
.meta{color:#666}
"""


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Project onto the top two principal components: ``[N, 2]``."""
    centered = vectors.astype(np.float64) - vectors.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return (centered @ vt[:2].T).astype(np.float32)


def scatter_svg(
    points: np.ndarray, labels: list[str] | np.ndarray, title: str = "", size: int = 520
) -> str:
    """An SVG scatter plot of ``[N, 2]`` points coloured by label, with a legend."""
    labels = [str(x) for x in labels]
    kinds = sorted(set(labels))
    if all(k.lower() in NAMED_COLOURS for k in kinds):
        colour = {k: NAMED_COLOURS[k.lower()] for k in kinds}
    else:
        colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}
    lo, hi = points.min(0), points.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    margin, legend_w = 20, 150
    xy = margin + (points - lo) / span * (size - 2 * margin)
    xy[:, 1] = size - xy[:, 1]
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{colour[k]}" fill-opacity="0.7"/>'
        for (x, y), k in zip(xy, labels, strict=True)
    )
    legend = "".join(
        f'<circle cx="{size + 14}" cy="{28 + 18 * i}" r="5" fill="{colour[k]}"/>'
        f'<text x="{size + 26}" y="{32 + 18 * i}" font-size="12">{html.escape(k)}</text>'
        for i, k in enumerate(kinds[:30])
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + legend_w}" '
        f'height="{size}" role="img" aria-label="{html.escape(title)}">'
        f'<rect width="{size}" height="{size}" fill="#fafafa" stroke="#ddd"/>'
        f"{dots}{legend}</svg>"
    )


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Report:
    """Collects sections, then writes one HTML file with everything inlined.

    Example:
        >>> r = Report("My latents"); r.text("Hello"); r.image("grid", pil_image)
        >>> r.write("report.html")
    """

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame, float_format: str = "{:.3f}") -> None:
        shown = frame.copy()
        for column in shown.columns:
            if pd.api.types.is_float_dtype(shown[column]):
                shown[column] = shown[column].map(lambda v: float_format.format(v))
        self.parts.append(shown.to_html(index=False, escape=True, border=0))

    def image(
        self, caption: str, image: Image.Image, path: str | os.PathLike | None = None
    ) -> None:
        """Inline a PIL image (and name the PNG beside the report, if saved there)."""
        alt = html.escape(caption)
        link = f' <a href="{html.escape(Path(path).name)}">PNG</a>' if path else ""
        self.parts.append(
            f'<figure><img src="{_data_uri(image)}" alt="{alt}">'
            f"<figcaption>{alt}{link}</figcaption></figure>"
        )

    def svg(self, caption: str, svg: str) -> None:
        self.parts.append(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return (
            f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically; returns the path."""
        with atomic_path(path) as tmp:
            tmp.write_text(self.render(), encoding="utf-8")
        return Path(path)
