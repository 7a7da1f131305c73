"""``embedkit map``: the map table in LATENTS/maps/, and a PNG coloured by a column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from PIL import Image

from embedkit.cli import get_cli
from embedkit.curation import draw_map, map_colors, save_map


def test_cli_writes_the_table_and_a_png(clean: Path, tmp_path: Path) -> None:
    png = tmp_path / "map.png"
    args = ["map", str(clean), "--sample", "300", "--color", "shape", "-o", str(png)]
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 0, result.output
    points = pd.read_parquet(clean / "maps" / "pca.parquet")
    assert list(points.columns) == ["id", "x", "y"] and len(points) == 300
    image = Image.open(png)
    colours = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
    assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours  # three shapes


def test_numeric_colours_and_errors(clean: Path, tmp_path: Path) -> None:
    points, path = save_map(clean, sample=200)
    assert path == clean / "maps" / "pca.parquet"
    scale = map_colors(clean, points, "scale")
    assert scale.notna().all() and len(scale) == 200
    assert draw_map(points, tmp_path / "m.png", scale).is_file()
    result = CliRunner().invoke(get_cli(), ["map", str(clean), "--color", "nope", "-o", "x.png"])
    assert result.exit_code != 0 and "no column 'nope'" in str(result.exception)
    assert "points" not in result.output  # refused before the map was computed and written
    result = CliRunner().invoke(get_cli(), ["map", str(clean), "--color", "shape"])
    assert result.exit_code != 0 and "pass -o map.png" in result.output
