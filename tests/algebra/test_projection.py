"""2-D maps: PCA by faiss on a streamed sample, UMAP/t-SNE behind their extras."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from embedkit.algebra.projection import project, sample_positions
from embedkit.errors import InputError
from embedkit.plugins.info import BackboneInfo
from embedkit.store.dataset import open_latents
from embedkit.store.writer import write_latents


def clusters(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters along the first two axes, noise elsewhere."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, 3, n)
    centres = np.zeros((3, dim), np.float32)
    centres[:, :2] = [[10, 0], [0, 10], [-10, -10]]
    return centres[which] + rng.normal(size=(n, dim)).astype(np.float32), which


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    x, which = clusters(3000, 16)
    path = tmp_path_factory.mktemp("map") / "lat"
    write_latents(path, [f"r{i}" for i in range(len(x))], x, BackboneInfo("t", dim=16))
    return path, x, which


def test_pca_matches_the_top_two_principal_axes(three) -> None:
    path, x, _ = three
    got = project(open_latents(path), sample=None)
    assert list(got.columns) == ["id", "x", "y"] and len(got) == len(x)
    assert got["id"].tolist() == [f"r{i}" for i in range(len(x))]
    centred = x - x.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:2]
    want = centred @ axes.T
    for ours, theirs in zip((got["x"], got["y"]), want.T, strict=True):
        corr = np.corrcoef(ours, theirs)[0, 1]
        assert abs(corr) > 0.999  # the same axis, up to sign


def test_the_map_separates_clusters(three) -> None:
    path, _, which = three
    got = project(open_latents(path), sample=None)
    xy = got[["x", "y"]].to_numpy()
    centres = np.array([xy[which == c].mean(axis=0) for c in range(3)])
    spread = max(xy[which == c].std(axis=0).max() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 5 * spread


def test_sample_is_seeded_and_a_subset(three) -> None:
    path, x, _ = three
    ds = open_latents(path)
    a, b = project(ds, sample=500, seed=3), project(ds, sample=500, seed=3)
    assert len(a) == 500 and a.equals(b)
    assert not a["id"].equals(project(ds, sample=500, seed=4)["id"])
    rows = np.array([int(i[1:]) for i in a["id"]])
    assert (np.diff(rows) > 0).all()  # dataset order
    np.testing.assert_array_equal(sample_positions(len(x), 500, 3), rows)


def test_bad_method_and_missing_extra_are_one_line_errors(three) -> None:
    ds = open_latents(three[0])
    with pytest.raises(InputError, match="unknown map method 'mds'"):
        project(ds, method="mds")
    if importlib.util.find_spec("umap") is None:
        with pytest.raises(InputError, match="needs umap-learn"):
            project(ds, method="umap", sample=100)
    with pytest.raises(InputError, match="sample must be"):
        project(ds, sample=0)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn missing")
def test_tsne_when_installed(three) -> None:
    got = project(open_latents(three[0]), method="tsne", sample=300)
    assert len(got) == 300 and np.isfinite(got[["x", "y"]].to_numpy()).all()
