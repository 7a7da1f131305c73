"""Threshold search (embedkit.index.radius): every neighbour within a radius, by faiss'
range search or k-NN of growing k, equal to brute force on exact indexes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedkit.errors import InputError
from embedkit.index import build_index, neighbors
from embedkit.index.metric import prepare_vectors
from embedkit.index.search import clear_index_cache
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.writer import write_latents

N, DIM = 5000, 16


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.fixture(scope="module")
def lat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """5,000 rows in 10 tight clusters: hundreds of rows within a loose radius."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 10, N)] + 0.3 * rng.normal(size=(N, DIM)).astype(np.float32)
    path = tmp_path_factory.mktemp("radius") / "lat"
    ids = [f"r{i}" for i in range(N)]
    write_latents(
        path, ids, x, BackboneInfo("test-encoder", DIM), columns={"odd": np.arange(N) % 2}
    )
    return path, x


def within(x: np.ndarray, rows: list[int], radius: float, metric: str) -> list[set[str]]:
    """The ids within ``radius`` of each row (itself left out), by brute force."""
    base = prepare_vectors(x, metric, "x")
    out = []
    for row in rows:
        if metric == "cosine":
            hit = base @ base[row] >= radius
        else:
            hit = ((base - base[row]) ** 2).sum(axis=1) <= radius
        hit[row] = False
        out.append({f"r{i}" for i in np.flatnonzero(hit)})
    return out


@pytest.mark.parametrize(("metric", "radius"), [("cosine", 0.9), ("l2", 3.0)])
def test_exact_radius_search_equals_brute_force(lat, metric: str, radius: float) -> None:
    path, x = lat
    rows = [0, 17, 4999]
    frame = neighbors(path, ids=[f"r{r}" for r in rows], radius=radius, metric=metric)
    assert frame.attrs["radius_method"] == "range search" and frame.attrs["search"] == "exact"
    expected = within(x, rows, radius, metric)
    column = "score" if metric == "cosine" else "distance"
    for row, want in zip(rows, expected, strict=True):
        got = frame[frame["query"] == f"r{row}"]
        assert set(got["id"]) == want and len(want) > 64  # more than one k-NN round's worth
        assert got["rank"].tolist() == list(range(1, len(got) + 1))
        values = got[column].to_numpy()
        assert (np.diff(values) <= 0).all() if metric == "cosine" else (np.diff(values) >= 0).all()


@pytest.mark.parametrize("kind", ["hnsw", "IVF16,SQ8,RFlat"])
def test_other_kinds_grow_k_until_the_radius_is_passed(lat, kind: str) -> None:
    path, x = lat
    built = build_index(path, kind=kind, progress=False, save=False)
    rows = [3, 250]
    frame = neighbors(path, ids=[f"r{r}" for r in rows], radius=0.9, index=built)
    assert frame.attrs["radius_method"] == "k-NN of growing k"
    for row, want in zip(rows, within(x, rows, 0.9, "cosine"), strict=True):
        got = set(frame[frame["query"] == f"r{row}"]["id"])
        assert len(want) > 64 and len(got & want) >= 0.95 * len(want) and got <= want


def test_an_ivf_flat_index_range_searches_its_probed_lists(lat) -> None:
    path, x = lat
    built = build_index(path, kind="ivf", progress=False, save=False)
    frame = neighbors(path, ids=["r5", "r6"], radius=0.9, index=built)
    assert frame.attrs["radius_method"] == "range search" and frame.attrs["search"] == "index"
    for row, want in zip([5, 6], within(x, [5, 6], 0.9, "cosine"), strict=True):
        got = set(frame[frame["query"] == f"r{row}"]["id"])
        assert len(want) > 64 and got <= want and len(got) >= 0.95 * len(want)


def test_radius_within_a_filter(lat) -> None:
    path, x = lat
    view = open_latents(path).filter(odd=1)
    frame = neighbors(view, ids=["r2"], radius=0.9)
    (want,) = within(x, [2], 0.9, "cosine")
    assert set(frame["id"]) == {i for i in want if int(i[1:]) % 2 == 1}


def test_bad_radius_is_a_one_line_error(lat) -> None:
    path, _ = lat
    with pytest.raises(InputError, match="radius must be a number"):
        neighbors(path, ids=["r1"], radius="near")
    with pytest.raises(InputError, match="squared L2 distance >= 0"):
        neighbors(path, ids=["r1"], radius=-1.0, metric="l2", index="exact")


def test_cli_radius(lat) -> None:
    from embedkit.cli import cli

    path, x = lat
    out = CliRunner().invoke(cli, ["search", str(path), "--id", "r9", "--radius", "0.95",
                                   "--format", "csv"])  # fmt: skip
    assert out.exit_code == 0, out.output
    rows = [line for line in out.stdout.splitlines()[1:] if line]
    (want,) = within(x, [9], 0.95, "cosine")
    assert len(rows) == len(want) > 0
