"""What the explorer tests share: the shapes corpus at 32 px, embedded once with a VAE of
the demo's architecture (one short epoch: these tests check plumbing, not quality) and
once with the non-decoding ``pixels`` backbone; and a client factory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

import embedkit
from embedkit.images.corpus import make_shapes, read_labels
from embedkit.serve.app import create_app


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """48 labeled shapes at 32 px."""
    root = tmp_path_factory.mktemp("serve-shapes")
    make_shapes(root, n=48, size=32, seed=1)
    return root


@pytest.fixture(scope="session")
def labels(shapes) -> object:
    return read_labels(shapes)


@pytest.fixture(scope="session")
def vae_latents(shapes, tmp_path_factory) -> Path:
    """The corpus embedded with a VAE as the demo builds it (32 px, latent dim 32)."""
    from embedkit_vae import train

    run = tmp_path_factory.mktemp("serve-vae") / "vae"
    train(shapes, run, "vae", latent_dim=32, image_size=32, epochs=1, progress=False)
    out = tmp_path_factory.mktemp("serve-vae-latents") / "latents"
    embedkit.embed(shapes / "labels.parquet", f"vae:{run}", out, progress=False)
    return out


@pytest.fixture(scope="session")
def pixel_latents(shapes, tmp_path_factory) -> Path:
    """The corpus embedded with ``pixels`` (no decoder)."""
    out = tmp_path_factory.mktemp("serve-pixels") / "latents"
    embedkit.embed(shapes / "labels.parquet", "pixels", out, progress=False)
    return out


@pytest.fixture
def fresh_copy(tmp_path) -> Callable[[Path], Path]:
    """A copy of a dataset for a test that changes it or counts its thumbnails."""

    def copy(latents: Path) -> Path:
        target = tmp_path / f"copy-{latents.parent.name}"
        shutil.copytree(latents, target, ignore=shutil.ignore_patterns(".embedkit"))
        return target

    return copy


@pytest.fixture
def client() -> Callable[..., TestClient]:
    """``client(latents, **create_app options)``: a TestClient addressed to localhost."""

    def make(latents: Path, raise_server_exceptions: bool = True, **options) -> TestClient:
        return TestClient(
            create_app(latents, **options),
            base_url="http://localhost",
            raise_server_exceptions=raise_server_exceptions,
        )

    return make


@pytest.fixture
def small_dataset() -> Callable[..., Path]:
    """``small_dataset(folder, sources, ids=None, **columns)``: a dataset written with
    :func:`embedkit.write_latents` (appended to when it exists): ids ``a``, ``b``, ...
    unless given, random 4-d latents, the image sources and label columns given."""

    def write(folder: Path, sources: list[Path], ids: list[str] | None = None, **columns) -> Path:
        ids = ids or [chr(ord("a") + i) for i in range(len(sources))]
        rng = np.random.default_rng(len(ids))
        vectors = rng.normal(size=(len(ids), 4)).astype(np.float32)
        info = embedkit.BackboneInfo("serve-test", dim=4)
        sources = [str(s) for s in sources]
        embedkit.write_latents(folder, ids, vectors, info, columns=columns or None, sources=sources)
        return folder

    return write
