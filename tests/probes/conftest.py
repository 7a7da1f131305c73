"""Latents of the built-in shapes corpus the probe tests share, made once per session:
raw ``pixels``, a VAE trained briefly on the same images, and (slow) the ImageNet-trained
EfficientNet-Lite0 per stage."""

from __future__ import annotations

from pathlib import Path

import pytest

import embedkit
from embedkit.images.corpus import make_shapes

# the quick VAE: 600 images at 32 px, 12 epochs (about 5 s on 2 cores)
QUICK = {"n": 600, "epochs": 12}
# the longer one (slow tests): 1000 images, 20 epochs (about 15 s)
LONGER = {"n": 1000, "epochs": 20}
STAGES = [0, 1, 2, 3, 4]  # every stage of efficientnet_lite0 (widths 16, 24, 40, 112, 320)


def embed_shapes(root: Path, n: int, epochs: int, seed: int = 0) -> tuple[Path, Path]:
    """``(pixels latents, VAE latents)`` of ``n`` shapes at 32 px, the VAE trained ``epochs``
    (``seed``: of the corpus and the training; the tests use 0, docs/probes.md 0-2)."""
    from embedkit_vae import train

    labels = make_shapes(root / "corpus", n=n, size=32, seed=seed)
    run = train(
        root / "corpus",
        root / "vae",
        "vae",
        latent_dim=32,
        image_size=32,
        epochs=epochs,
        seed=seed,
        patience=None,
        progress=False,
    )
    embedkit.embed(labels, "pixels", root / "pixels", num_workers=0, progress=False)
    embedkit.embed(
        labels, f"vae:{run.run_dir}", root / "vae_latents", num_workers=0, progress=False
    )
    return root / "pixels", root / "vae_latents"


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory) -> tuple[Path, Path]:
    """150 shapes at 32 px through ``pixels`` at 8 x 8 and at 4 x 4 (a second dataset of
    the same images): fast inputs for the command and the report."""
    root = tmp_path_factory.mktemp("probe_small")
    labels = make_shapes(root / "corpus", n=150, size=32, seed=0)
    for size in (8, 4):
        embedkit.embed(
            labels,
            "pixels",
            root / f"px{size}",
            num_workers=0,
            progress=False,
            backbone_options={"size": size},
        )
    return root / "px8", root / "px4"


@pytest.fixture(scope="session")
def quick_shapes(tmp_path_factory) -> tuple[Path, Path]:
    return embed_shapes(tmp_path_factory.mktemp("probe_quick"), **QUICK)


@pytest.fixture(scope="session")
def longer_shapes(tmp_path_factory) -> tuple[Path, Path]:
    return embed_shapes(tmp_path_factory.mktemp("probe_longer"), **LONGER)


@pytest.fixture(scope="session")
def lite0_stages(tmp_path_factory) -> Path:
    """300 shapes at 64 px through pretrained/efficientnet_lite0, every stage (~12 s)."""
    root = tmp_path_factory.mktemp("probe_stages")
    labels = make_shapes(root / "corpus", n=300, size=64, seed=0)
    out = root / "lite0"
    embedkit.embed(
        labels,
        "pretrained/efficientnet_lite0",
        out,
        num_workers=0,
        progress=False,
        backbone_options={"layers": STAGES},
    )
    return out
