"""A diverse subset: greedy k-center covers the corpus with a smaller radius than a random
subset of the same size; the radius it reports is the true coverage radius."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from embedkit import BackboneInfo, open_latents, write_latents
from embedkit.cli import get_cli
from embedkit.curation import coverage_radius, diverse_subset
from embedkit.errors import InputError


@pytest.mark.parametrize("n", [20, 100])
def test_smaller_radius_than_random(clean: Path, n: int) -> None:
    subset = diverse_subset(clean, n)
    ids = open_latents(clean).ids()
    randoms = [
        coverage_radius(clean, np.random.default_rng(seed).choice(ids, n, replace=False))
        for seed in range(5)
    ]
    radius = subset.attrs["radius"]
    print(f"\nk-center {n}: radius {radius:.4f}; random subsets: {min(randoms):.4f} at best")
    assert radius < min(randoms)
    assert radius == pytest.approx(coverage_radius(clean, subset["id"]), rel=1e-4)
    assert subset["order"].tolist() == list(range(n)) and subset["id"].is_unique
    assert (np.diff(subset["radius"]) <= 1e-7).all()  # adding rows never uncovers one


def test_l2_matches_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    lat = write_latents(tmp_path / "l", range(400), x, BackboneInfo("t", dim=6))
    subset = diverse_subset(lat, 12, metric="l2")
    chosen = x[subset["id"].astype(int)]
    gaps = ((x[:, None, :] - chosen[None, :, :]) ** 2).sum(-1)
    assert subset.attrs["radius"] == pytest.approx(gaps.min(1).max(), rel=1e-4)
    first, second = chosen[0], x[subset["id"].astype(int)[1]]
    assert ((x - second) ** 2).sum(1).argmin() == int(subset["id"][1])
    assert ((x - x.mean(0)) ** 2).sum(1).argmin() == int(subset["id"][0]) and first is not None
    with pytest.raises(InputError, match="n must be an integer between 1 and the 400"):
        diverse_subset(lat, 401)


def test_cli(clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset.parquet"
    result = CliRunner().invoke(get_cli(), ["select", str(clean), "--diverse", "50", "-o", out])
    assert result.exit_code == 0, result.output
    assert "coverage radius" in result.output and "a random subset of 50" in result.output
    assert list(pd.read_parquet(out).columns) == ["id", "order", "radius"]
