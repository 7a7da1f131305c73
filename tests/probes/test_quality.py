"""What latents of the built-in shapes corpus encode, measured by the probes on real
(small) embeddings: raw pixels, a briefly trained VAE, and the stages of an ImageNet CNN.
Every margin below was measured first (corpus seeds 0-2; see docs/probes.md)."""

from __future__ import annotations

import pandas as pd
import pytest

import embedkit

COLUMNS = ["shape", "color", "size", "filled", "scale", "x", "y"]


def show(table: pd.DataFrame) -> None:
    print(table.drop(columns=["kind", "n_train"]).to_string(float_format=lambda v: f"{v:.3f}"))


def scores(table: pd.DataFrame, column: str, dataset: str, block: str = "all") -> pd.Series:
    rows = table[
        (table["column"] == column) & (table["dataset"] == dataset) & (table["block"] == block)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


@pytest.fixture(scope="module")
def quick_table(quick_shapes) -> pd.DataFrame:
    table = embedkit.probe(list(quick_shapes), COLUMNS)
    show(table)
    return table


def test_pixels_encode_colour_far_above_the_baseline(quick_table):
    colour = scores(quick_table, "color", "pixels")
    # measured: baseline 0.27, k-NN 0.99-1.00, linear 1.00 (4 colours, 150 test rows)
    assert colour["baseline"] < 0.35
    assert colour["knn"] >= colour["baseline"] + 0.3
    assert colour["linear"] >= colour["baseline"] + 0.3
    assert colour["knn"] >= 0.9


def test_a_briefly_trained_vae_makes_position_linear(quick_table):
    # measured (seeds 0-2): linear-probe R² of x and y: VAE 0.88-0.94, pixels 0.65-0.71
    for axis in ("x", "y"):
        vae, pixels = scores(quick_table, axis, "vae_latents"), scores(quick_table, axis, "pixels")
        assert vae["linear"] >= pixels["linear"] + 0.12, axis
        assert vae["linear"] >= 0.8, axis


@pytest.mark.slow
def test_a_longer_trained_vae_beats_pixels_on_shape_and_scale(longer_shapes):
    table = embedkit.probe(list(longer_shapes), ["shape", "scale"])
    show(table)
    # measured (seeds 0-2, and reruns): shape k-NN VAE 0.76-0.80 vs pixels 0.60-0.65 (+0.14
    # to +0.20); scale k-NN R² VAE 0.80-0.86 vs pixels 0.59-0.65 (+0.19 to +0.21)
    shape_vae, shape_px = scores(table, "shape", "vae_latents"), scores(table, "shape", "pixels")
    assert shape_vae["knn"] >= shape_px["knn"] + 0.08
    scale_vae, scale_px = scores(table, "scale", "vae_latents"), scores(table, "scale", "pixels")
    assert scale_vae["knn"] >= scale_px["knn"] + 0.1


@pytest.mark.slow
def test_cnn_stages_encode_shape_and_position_deeper_colour_everywhere(lite0_stages):
    table = embedkit.probe(lite0_stages, ["shape", "color", "x"])
    show(table)
    at = lambda column, stage: scores(table, column, "lite0", f"stage{stage}")  # noqa: E731
    # shape k-NN measured (seeds 0-2): stage0 0.49-0.59, stage1 0.64-0.80, stage2 0.83-0.89,
    # stages 3-4 1.00
    assert at("shape", 1)["knn"] <= at("shape", 3)["knn"] - 0.15
    assert at("shape", 0)["knn"] < at("shape", 2)["knn"]
    assert min(at("shape", 3)["knn"], at("shape", 4)["knn"]) >= 0.95
    # colour: linear 1.00 at every stage; k-NN 1.00 at stages 0-2 (0.85-0.93 deeper)
    assert all(at("color", s)["linear"] >= 0.98 for s in range(5))
    assert all(at("color", s)["knn"] >= 0.98 for s in range(3))
    # position: pooled shallow features are translation-invariant (R² 0.00 at stages 0-1);
    # the deep stages see the borders (linear R² 0.77-0.84)
    assert max(at("x", 0)["linear"], at("x", 1)["linear"]) < 0.1
    assert min(at("x", 3)["linear"], at("x", 4)["linear"]) >= 0.6
