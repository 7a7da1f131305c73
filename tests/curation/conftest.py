"""The corpora the curation tests share, made once per session: the built-in shapes corpus
(1000 images, 64 px) embedded with the ``pixels`` backbone, with planted copies (exact,
JPEG quality 70, resized) and planted out-of-distribution images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from curation_data import SIZE, N, draw_odd, plant_copies, subset

from embedkit import embed
from embedkit.images.corpus import make_shapes


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curation") / "corpus"
    make_shapes(root, n=N, size=SIZE, seed=0)
    labels = pd.read_parquet(root / "labels.parquet").assign(dup_of=-1, kind="original")
    table = pd.concat([labels, plant_copies(root, labels), draw_odd(root)], ignore_index=True)
    table["dup_of"] = table["dup_of"].fillna(-1).astype(int)
    table.to_parquet(root / "all.parquet")
    return root


@pytest.fixture(scope="session")
def everything(shapes_root: Path) -> Path:
    """Every image (originals, copies, odd ones) embedded with ``pixels`` (8 x 8)."""
    out = shapes_root.parent / "everything"
    embed(shapes_root / "all.parquet", "pixels", out, progress=False)
    return out


@pytest.fixture(scope="session")
def with_copies(everything: Path) -> Path:
    """The originals and their planted copies."""
    out = everything.parent / "with_copies"
    keep = lambda t: t["kind"].isin(["original", "exact", "jpeg", "resized"])  # noqa: E731
    return subset(everything, out, keep)


@pytest.fixture(scope="session")
def clean_pretrained(shapes_root: Path) -> Path:
    """The originals through the ImageNet-trained EfficientNet-Lite0 (about 30 s)."""
    out = shapes_root.parent / "clean_pretrained"
    embed(shapes_root / "labels.parquet", "pretrained/efficientnet_lite0", out, progress=False)
    return out


@pytest.fixture(scope="session")
def clean(everything: Path) -> Path:
    """The originals only."""
    return subset(everything, everything.parent / "clean", lambda t: t["kind"] == "original")


@pytest.fixture(scope="session")
def with_odd(everything: Path) -> Path:
    """The originals and the out-of-distribution images."""
    keep = lambda t: ~t["kind"].isin(["exact", "jpeg", "resized"])  # noqa: E731
    return subset(everything, everything.parent / "with_odd", keep)
