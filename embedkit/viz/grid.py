"""Image grids (PNG): rows of cells with optional captions and row titles."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from embedkit.files import atomic_path
from embedkit.images.decode import load_image

__all__ = ["image_grid", "load_thumbnail", "save_png"]

BACKGROUND = (255, 255, 255)
MISSING = (230, 230, 230)
TEXT = (40, 40, 40)


def load_thumbnail(path: str | os.PathLike, size: int) -> Image.Image | None:
    """An image fitted into a ``size`` square, or None when it cannot be read."""
    try:
        image = load_image(path, min_side=size)
    except Exception:  # a grid shows a grey cell rather than failing on one bad file
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    text = text[: max(1, width // 4)]  # no font here draws under 4 px a character
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def image_grid(
    rows: Sequence[Sequence[Image.Image | None]],
    cell: int = 96,
    captions: Sequence[Sequence[str]] | None = None,
    row_titles: Sequence[str] | None = None,
    pad: int = 4,
) -> Image.Image:
    """Lay out ``rows`` of images (None draws a grey cell) with captions under each cell.

    Example:
        >>> image_grid([[a, b, c], [d, e, None]], captions=[["q", "1", "2"], ["q", "1", "2"]])
    """
    font = _font()
    ncols = max((len(r) for r in rows), default=0)
    caption_h = 14 if captions else 0
    title_w = 110 if row_titles else 0
    width = title_w + ncols * (cell + pad) + pad
    height = len(rows) * (cell + caption_h + pad) + pad
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (cell + caption_h + pad)
        if row_titles:
            title = _fit(str(row_titles[r]), draw, font, title_w - pad)
            draw.text((pad, y + cell // 2 - 6), title, fill=TEXT, font=font)
        for c, image in enumerate(row):
            x = title_w + pad + c * (cell + pad)
            if image is None:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=MISSING)
            else:
                thumb = image.convert("RGB")
                if max(thumb.size) != cell:
                    scale = cell / max(thumb.size)
                    new = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
                    thumb = thumb.resize(
                        new, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
                    )
                canvas.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
            if captions and c < len(captions[r]):
                text = _fit(str(captions[r][c]), draw, font, cell)
                draw.text((x, y + cell + 1), text, fill=TEXT, font=font)
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save atomically (temp file + rename); returns the path."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
