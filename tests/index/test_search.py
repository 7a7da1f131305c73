"""Nearest-neighbour search: embedkit.search.neighbors and `embedkit search`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from embedkit.errors import InputError
from embedkit.index import build_index, load_index
from embedkit.index.search import clear_index_cache, neighbors
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.writer import write_latents

N, DIM = 600, 16


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    ids = [f"item{i:04d}" for i in range(N)]
    columns = {"label": [f"L{i % 5}" for i in range(N)], "score2": np.arange(N) * 0.5}
    sources = [f"img/{i}.png" for i in range(N)]
    path = write_latents(
        tmp_path / "lat", ids, x, BackboneInfo("test-encoder", DIM), columns, sources
    )
    return path, x, ids


def brute_force(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """[nq, N] similarity (cosine) or squared distance (l2)."""
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        return qn.astype(np.float64) @ xn.T.astype(np.float64)
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    return (q64**2).sum(1)[:, None] - 2 * q64 @ x64.T + (x64**2).sum(1)[None, :]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_by_id_equals_numpy(data, metric: str) -> None:
    path, x, ids = data
    rows = [3, 77, 599]
    frame = neighbors(path, ids=[ids[r] for r in rows], k=7, metric=metric)
    column = "score" if metric == "cosine" else "distance"
    assert list(frame.columns) == ["query", "rank", "id", column, "source", "label", "score2"]
    assert len(frame) == len(rows) * 7
    sims = brute_force(x, x[rows], metric)
    for qi, r in enumerate(rows):
        order = np.argsort(-sims[qi] if metric == "cosine" else sims[qi], kind="stable")
        order = [o for o in order if o != r][:7]  # exclude_self
        got = frame[frame["query"] == ids[r]]
        assert got["rank"].tolist() == list(range(1, 8))
        assert got["id"].tolist() == [ids[o] for o in order]
        np.testing.assert_allclose(got[column], sims[qi][order], rtol=1e-4, atol=1e-4)
        # carried metadata of the neighbour rows
        assert got["source"].tolist() == [f"img/{o}.png" for o in order]
        assert got["label"].tolist() == [f"L{o % 5}" for o in order]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_by_vectors_equals_numpy(data, metric: str) -> None:
    path, x, ids = data
    q = np.random.default_rng(5).normal(size=(4, DIM)).astype(np.float32)
    frame = neighbors(path, vectors=q, k=5, metric=metric)
    assert frame["query"].tolist() == list(np.repeat(np.arange(4), 5))
    sims = brute_force(x, q, metric)
    column = "score" if metric == "cosine" else "distance"
    for i in range(4):
        order = np.argsort(-sims[i] if metric == "cosine" else sims[i])[:5]
        got = frame[frame["query"] == i]
        assert got["id"].tolist() == [ids[o] for o in order]
        np.testing.assert_allclose(got[column], sims[i][order], rtol=1e-4, atol=1e-4)
    one = neighbors(path, vectors=q[0], k=3, metric=metric)  # a single [D] vector
    assert len(one) == 3 and set(one["query"]) == {0}


def test_exclude_self_and_columns(data) -> None:
    path, _, ids = data
    with_self = neighbors(path, ids=ids[10], k=4, exclude_self=False, columns=["label"])
    assert list(with_self.columns) == ["query", "rank", "id", "score", "label"]
    assert with_self["id"].iloc[0] == ids[10]
    assert with_self["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    without = neighbors(path, ids=[ids[10]], k=4, columns=[])
    assert list(without.columns) == ["query", "rank", "id", "score"]
    assert ids[10] not in without["id"].tolist()
    assert without["id"].tolist()[:3] == with_self["id"].tolist()[1:]


def test_saved_index_is_used(data) -> None:
    path, x, ids = data
    build_index(path, kind="ivf", metric="l2", progress=False)
    frame = neighbors(path, ids=ids[:20], k=10)  # metric comes from the saved index
    assert "distance" in frame.columns and len(frame) == 200
    assert not (frame["id"] == frame["query"]).any()
    # nprobe override: exhaustive probing equals exact search
    loaded = load_index(path)
    exhaustive = neighbors(path, vectors=x[:5], k=5, index=loaded, nprobe=10_000)
    exact = neighbors(path, vectors=x[:5], k=5, index="exact", metric="l2")
    assert exhaustive["id"].tolist() == exact["id"].tolist()
    assert loaded.info.params == load_index(path).info.params  # override was undone
    with pytest.raises(InputError, match=r"uses metric l2 but metric='cosine' was requested"):
        neighbors(path, ids=ids[:1], metric="cosine")
    with pytest.raises(InputError, match="metric='cosine'"):
        neighbors(path, ids=ids[:1], metric="cosine", index=loaded)


def test_nprobe_on_exact_index_is_an_error(data) -> None:
    path, _, ids = data
    with pytest.raises(InputError, match="nprobe applies to IVF"):
        neighbors(path, ids=ids[:1], nprobe=4)


def test_filtered_view_searches_only_its_rows(data) -> None:
    path, x, _ = data
    view = open_latents(path).filter(label="L2")
    frame = neighbors(view, vectors=x[:3], k=5)
    assert set(frame["label"]) == {"L2"} and len(frame) == 15


def test_float16_latents_search(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(200, 8)).astype(np.float32)
    ids = [str(i) for i in range(200)]
    path = write_latents(tmp_path / "f16", ids, x, BackboneInfo("enc", 8), dtype="float16")
    frame = neighbors(path, ids=["5"], k=3, exclude_self=False)
    assert frame["id"].iloc[0] == "5" and frame["score"].dtype == np.float32


# -- bad input -----------------------------------------------------------------------------
def test_bad_queries(data) -> None:
    path, _, ids = data
    cases = [
        (dict(vectors=np.zeros((2, DIM + 1))), "dim 17 but the latents have dim 16"),
        (dict(ids=["item0001", "nope", "gone"]), "id 'nope', 'gone' not found"),
        (dict(vectors=np.full(DIM, np.nan)), "query vector 0 holds NaN or inf"),
        (dict(vectors=np.array([[1.0] * DIM, [np.inf] * DIM])), "query vector 1 holds NaN"),
        (dict(ids=ids[0], k=0), "k must be an integer >= 1"),
        (dict(), "exactly one of ids=, vectors= or images="),
        (dict(ids=ids[0], vectors=np.zeros(DIM)), "ids and vectors given"),
        (dict(ids=ids[0], columns=["colour"]), "no column 'colour'"),
        (dict(ids=ids[0], metric="dot"), "metric 'dot'"),
        (dict(ids=[]), "ids= is empty"),
        (dict(vectors=np.zeros((2, 3, 4))), "shape"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message) as err:
            neighbors(path, **kwargs)
        assert "\n" not in str(err.value), kwargs


def test_empty_latents(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no part"):
        neighbors(tmp_path / "empty", vectors=np.zeros(4))
    with pytest.raises(InputError, match="does not exist"):
        neighbors(tmp_path / "missing", vectors=np.zeros(4))


# -- images --------------------------------------------------------------------------------
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (128, 128, 128)}


def test_image_query_uses_the_recorded_backbone(ektest_plugin, tmp_path: Path) -> None:
    """Latents made by ``ekscale/2.0`` (mean colour x 2): only that backbone gives distance 0."""
    vectors = 2 * np.array(list(COLOURS.values()), dtype=np.float32) / 255
    info = BackboneInfo("ekscale/2.0", dim=3, config={"size": 8})
    path = write_latents(tmp_path / "lat", list(COLOURS), vectors, info)
    query = tmp_path / "green.png"
    Image.new("RGB", (20, 12), COLOURS["green"]).save(query)
    frame = neighbors(path, images=str(query), k=2, metric="l2")
    assert frame["query"].tolist() == [str(query)] * 2
    assert frame["id"].iloc[0] == "green"
    assert frame["distance"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    # a PIL image and a palette image work too; cosine normalizes
    pal = Image.new("RGB", (8, 8), COLOURS["blue"]).convert("P")
    frame = neighbors(path, images=[pal, query], k=1)
    assert frame["id"].tolist() == ["blue", "green"] and frame["query"].tolist() == [0, str(query)]


def test_bad_images(ektest_plugin, tmp_path: Path) -> None:
    info = BackboneInfo("ektest", dim=3, config={"size": 8})
    path = write_latents(tmp_path / "lat", ["a", "b"], np.eye(2, 3, dtype=np.float32), info)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"cannot open image .*junk\.png"):
        neighbors(path, images=junk)
    with pytest.raises(InputError, match=r"image .*nothere\.png does not exist"):
        neighbors(path, images=[tmp_path / "nothere.png"])


# -- CLI -------------------------------------------------------------------------------------
def test_cli_search(data, tmp_path: Path) -> None:
    from embedkit.cli import cli

    path, x, ids = data
    runner = CliRunner()
    table = runner.invoke(cli, ["search", str(path), "--id", ids[1], "--id", ids[2], "-k", "3"])
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0].split()[:4] == ["query", "rank", "id", "score"]
    assert len(table.output.splitlines()) == 7

    np.save(tmp_path / "q.npy", x[:2])
    vector_args = ["--vector", str(tmp_path / "q.npy"), "-k", "2", "--format", "csv"]
    csv = runner.invoke(cli, ["search", str(path), *vector_args])
    assert csv.exit_code == 0, csv.output
    frame = pd.read_csv(io.StringIO(csv.output))
    assert frame["id"].tolist()[::2] == [ids[0], ids[1]]

    out = runner.invoke(
        cli, ["search", str(path), "--id", ids[4], "--include-self", "-k", "1", "--format", "json"]
    )
    assert json.loads(out.output)[0]["id"] == ids[4]


def test_cli_search_errors_are_one_line(data, tmp_path: Path, capsys) -> None:
    from embedkit.cli import main

    path, _, _ = data
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(path), "--vector", str(tmp_path / "none.npy")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: vector file") and err.count("\n") == 1
