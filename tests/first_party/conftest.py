"""What the VAE tests share: a tiny model configuration and a tiny shapes corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit.images.corpus import make_shapes


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """48 shapes at 32 px (43 train, 5 validation images)."""
    root = tmp_path_factory.mktemp("tiny")
    make_shapes(root, n=48, size=32, seed=1)
    return root
