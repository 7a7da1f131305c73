"""Fixtures of the Ray engine tests: a shapes corpus of the module's ``N`` images and the
local engine's dataset of it, which the Ray engine must reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest

import embedkit
from embedkit.images.corpus import make_shapes


@pytest.fixture(scope="module")
def shapes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """labels.parquet of the module's ``N`` 32px shapes (id, path, seven carried columns)."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), n=request.module.N, size=32)


@pytest.fixture(scope="module")
def local_out(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes embedded by the local engine: what the Ray engine must reproduce."""
    out = tmp_path_factory.mktemp("local") / "lat"
    embedkit.embed(shapes, "pixels", out, num_workers=0, batch_size=32, progress=False)
    return out
