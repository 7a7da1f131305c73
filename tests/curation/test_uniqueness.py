"""Uniqueness and outliers: planted out-of-distribution images (noise, shapes the corpus
never draws) rank at the top; scores are scaled to [0, 1]; the CLI lists and saves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from curation_data import ODD

from embedkit import BackboneInfo, open_latents, write_latents
from embedkit.cli import get_cli
from embedkit.curation import outliers, uniqueness
from embedkit.errors import InputError


def test_planted_odd_images_rank_first(with_odd: Path) -> None:
    """In l2: the cosine of raw pixels (all positive) ignores brightness, so a light image
    can sit near dark ones; pixels latents are indexed with --metric l2 (docs/curation.md)."""
    table = open_latents(with_odd).to_pandas(embedding=False)
    odd = set(table.loc[table["kind"] != "original", "id"])
    for metric in ("l2", "cosine"):
        ranked = uniqueness(with_odd, metric=metric).sort_values("distance", ascending=False)
        ranks = ranked["id"].tolist()
        caught = len(odd & set(ranks[:ODD]))
        worst = max(ranks.index(i) for i in odd) + 1
        print(f"\n{metric}: {caught} of {ODD} planted in the top {ODD}, the last at rank {worst}")
    top = outliers(with_odd, top=ODD, metric="l2")
    assert set(top["id"]) == odd
    assert top["rank"].tolist() == list(range(1, ODD + 1))
    assert (top["z"] > 3).all()


def test_scores_are_scaled_and_in_dataset_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[17] *= 50  # far from everything (l2)
    lat = write_latents(tmp_path / "l", range(300), x, BackboneInfo("t", dim=8))
    scores = uniqueness(lat, k=5, metric="l2")
    assert scores["id"].tolist() == [str(i) for i in range(300)]
    assert scores["uniqueness"].min() == 0 and scores["uniqueness"].max() == 1
    assert scores.loc[scores["uniqueness"].idxmax(), "id"] == "17"
    assert scores.attrs == {"metric": "l2", "k": 5, "rows": 300}
    with pytest.raises(InputError, match="top must be"):
        outliers(lat, top=0)
    with pytest.raises(InputError, match="k must be"):
        uniqueness(lat, k=0)


def test_cli_lists_and_saves(with_odd: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.parquet"
    args = ["outliers", str(with_odd), "--top", "5", "-o", str(out)]
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 0, result.output
    assert "uniqueness: mean cosine distance to 10 nearest neighbours" in result.output
    assert len(pd.read_parquet(out)) == len(open_latents(with_odd))
