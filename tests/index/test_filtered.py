"""Filtered search (embedkit.index.filtered, resolve): a filtered view is searched with the
whole dataset's index and a faiss selector, or scanned exactly when small; the results
equal the exact filtered results at recall >= 0.95 and never leave the filter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import embedkit.index.filtered as filtered
from embedkit.errors import InputError
from embedkit.index import build_index, neighbors
from embedkit.index.filtered import filtered_params
from embedkit.index.metric import prepare_vectors
from embedkit.index.search import clear_index_cache
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.writer import write_latents

N, DIM = 12_000, 24
COLORS = np.array(["red", "blue", "green", "white", "black"])


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


def clustered(n: int, seed: int, labels: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(30, DIM)).astype(np.float32)
    cluster = rng.integers(0, 30, n)
    x = centres[cluster] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
    return (x, cluster) if labels else x


@pytest.fixture(scope="module")
def lat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """12,000 rows, a ``color`` independent of the vectors, a ``year``, and a ``region``
    that follows them (the cluster number mod 5: whole clusters)."""
    x, cluster = clustered(N, seed=1, labels=True)
    colors = COLORS[np.random.default_rng(2).integers(0, len(COLORS), N)]
    path = tmp_path_factory.mktemp("filtered") / "lat"
    years = 2000 + np.arange(N) % 25
    write_latents(
        path, [f"r{i}" for i in range(N)], x, BackboneInfo("test-encoder", DIM),
        columns={"color": colors, "year": years, "region": cluster % 5},
    )  # fmt: skip
    return path, x, colors


def exact_filtered(x: np.ndarray, keep: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k nearest rows with ``keep``, by brute force (cosine)."""
    base = prepare_vectors(x, "cosine", "x")
    q = prepare_vectors(queries, "cosine", "q")
    sims = q @ base.T
    sims[:, ~keep] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def recall(frame, truth: np.ndarray, k: int) -> float:
    got = frame["id"].to_numpy().reshape(len(truth), k)
    names = np.array([f"r{i}" for i in range(N)])[truth]
    return float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got, names, strict=True)]))


@pytest.fixture
def selector_from_1000_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Filters above 1,000 rows take the selector path (the real threshold is 20,000 rows,
    and an index visiting as many rows as the filter keeps is not used: on 12,000 rows
    it always would)."""
    monkeypatch.setattr(filtered, "EXACT_SUBSET_ROWS", 1000)
    monkeypatch.setattr(filtered, "visited_rows", lambda index, params: 0.0)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "IVF64,SQ8,RFlat"])
def test_filtered_results_equal_the_exact_filtered_results(
    lat, kind: str, selector_from_1000_rows
) -> None:
    path, x, colors = lat
    build_index(path, kind=kind, progress=False)
    queries = clustered(200, seed=9)  # not rows of the index
    view = open_latents(path).filter(color="red")
    frame = neighbors(view, vectors=queries, k=10)
    assert frame.attrs["search"] == "index+selector", frame.attrs
    assert "keeps 2,4" in frame.attrs["search_reason"]  # ~1/5 of 12,000
    assert set(frame["color"]) == {"red"}
    truth = exact_filtered(x, colors == "red", queries, 10)
    assert recall(frame, truth, 10) >= 0.95


@pytest.mark.parametrize("kind", ["ivf", "IVF64,SQ8,RFlat"])
def test_a_filter_that_follows_the_vectors_is_measured_not_guessed(
    lat, kind: str, selector_from_1000_rows
) -> None:
    """Whole clusters: a query from another cluster finds its nearest kept rows in lists
    the estimated nprobe never reaches. The measurement on the recall queries raises it
    (or scans exactly) until recall@10 against the exact filtered answer holds."""
    path, x, _ = lat
    region = open_latents(path).to_table(["region"]).column("region").to_numpy()
    built = build_index(path, kind=kind, progress=False)
    queries = clustered(300, seed=12)  # from every cluster, most outside the region
    frame = neighbors(open_latents(path).filter(region=0), vectors=queries, k=10)
    estimate = filtered.filtered_params(built, float((region == 0).mean()))["nprobe"]
    assert frame.attrs["search"] == "index+selector"
    assert frame.attrs["search_params"]["nprobe"] > estimate
    assert "reaches recall@10 >= 0.9" in frame.attrs["search_reason"]
    assert set(frame["region"]) == {0}
    assert recall(frame, exact_filtered(x, region == 0, queries, 10), 10) >= 0.95


def test_a_filter_the_index_would_scan_mostly_is_scanned_exactly(lat, monkeypatch) -> None:
    """Once its measured nprobe visits as many rows as the filter keeps, brute force over
    the kept rows is faster: the exact scan is chosen, and says why."""
    path, x, _ = lat
    monkeypatch.setattr(filtered, "EXACT_SUBSET_ROWS", 1000)
    region = open_latents(path).to_table(["region"]).column("region").to_numpy()
    build_index(path, kind="ivf", progress=False)
    queries = clustered(100, seed=13)
    frame = neighbors(open_latents(path).filter(region=0), vectors=queries, k=10)
    assert frame.attrs["search"] == "exact subset scan"
    reason = frame.attrs["search_reason"]
    assert "the index would visit ~" in reason and "brute force is faster" in reason
    assert recall(frame, exact_filtered(x, region == 0, queries, 10), 10) == 1.0


def test_a_flat_index_with_a_selector_is_exact(lat, selector_from_1000_rows) -> None:
    path, x, colors = lat
    build_index(path, kind="flat", progress=False)
    queries = clustered(50, seed=4)
    view = open_latents(path).filter(color=["blue", "green"])
    frame = neighbors(view, vectors=queries, k=10)
    assert frame.attrs["search"] == "index+selector"
    truth = exact_filtered(x, np.isin(colors, ["blue", "green"]), queries, 10)
    assert recall(frame, truth, 10) == 1.0


def test_a_small_filter_is_scanned_exactly(lat) -> None:
    path, x, colors = lat
    build_index(path, kind="ivf", progress=False)
    queries = clustered(30, seed=5)
    view = open_latents(path).filter(color="white")  # ~2,400 rows <= 10,000
    frame = neighbors(view, vectors=queries, k=10)
    assert frame.attrs["search"] == "exact subset scan"
    assert "<= 10,000: brute force is faster" in frame.attrs["search_reason"]
    assert recall(frame, exact_filtered(x, colors == "white", queries, 10), 10) == 1.0


def test_many_queries_at_once_scan_a_filter_the_index_would_visit_a_tenth_of(
    lat, monkeypatch
) -> None:
    """Brute force over a batch is a matrix product, ~10x cheaper a row than the index's
    list scan: 50 queries take the exact scan where 5 take the selector."""
    path, x, colors = lat
    monkeypatch.setattr(filtered, "EXACT_SUBSET_ROWS", 1000)
    monkeypatch.setattr(filtered, "visited_rows", lambda index, params: 1000.0)  # < 2,400 kept
    build_index(path, kind="ivf", progress=False)
    view = open_latents(path).filter(color="red")
    few = neighbors(view, vectors=clustered(5, seed=3), k=10)
    assert few.attrs["search"] == "index+selector"
    queries = clustered(50, seed=3)
    many = neighbors(view, vectors=queries, k=10)
    assert many.attrs["search"] == "exact subset scan"
    assert many.attrs["search_reason"].startswith("50 queries at once: brute force over the")
    assert recall(many, exact_filtered(x, colors == "red", queries, 10), 10) == 1.0


def test_id_queries_may_lie_outside_the_filter(lat, selector_from_1000_rows) -> None:
    path, x, colors = lat
    build_index(path, kind="ivf", progress=False)
    inside = int(np.flatnonzero(colors == "red")[0])
    outside = int(np.flatnonzero(colors != "red")[0])
    view = open_latents(path).filter(color="red")
    for row in (inside, outside):
        frame = neighbors(view, ids=[f"r{row}"], k=5)
        assert set(frame["color"]) == {"red"} and f"r{row}" not in set(frame["id"])
        truth = exact_filtered(x, (colors == "red") & (np.arange(N) != row), x[[row]], 5)
        assert recall(frame, truth, 5) >= 0.8
    kept = neighbors(view, ids=[f"r{inside}"], k=5, exclude_self=False)
    assert kept["id"].iloc[0] == f"r{inside}"


def test_a_stale_index_falls_back_to_an_exact_scan_or_is_updated(
    tmp_path: Path, selector_from_1000_rows
) -> None:
    x = clustered(6000, seed=3)
    info = BackboneInfo("test-encoder", DIM)
    path = tmp_path / "lat"
    ids = [f"a{i}" for i in range(6000)]
    write_latents(path, ids, x, info, columns={"half": np.arange(6000) % 2})
    build_index(path, kind="ivf", progress=False)
    write_latents(path, ["b0", "b1"], x[:2] + 0.01, info, columns={"half": [0, 1]})
    view = open_latents(path).filter(half=0)
    frame = neighbors(view, ids=["b0"], k=3)
    assert frame.attrs["search"] == "exact subset scan"
    assert "stale: 1 part added (2 rows)" in frame.attrs["search_reason"]
    assert frame["id"].iloc[0] == "a0"  # b0 was made next to a0
    updated = neighbors(view, ids=["b0"], k=3, update=True)
    assert updated.attrs["search"] == "index+selector"
    assert updated["id"].iloc[0] == "a0"


def test_empty_and_bad_filters_are_one_line_errors(lat) -> None:
    import pyarrow.compute as pc

    path, _, _ = lat
    build_index(path, kind="ivf", progress=False)
    with pytest.raises(InputError, match="keeps no rows"):
        neighbors(open_latents(path).filter(color="purple"), ids=["r1"], k=3)
    with pytest.raises(InputError, match="cannot apply the filter"):
        neighbors(open_latents(path).filter(pc.field("color") > 3), ids=["r1"], k=3)


def test_filtered_params_follow_the_measured_depth(lat) -> None:
    path, _, _ = lat
    built = build_index(path, kind="ivf", progress=False)
    tuned = built.info.params["nprobe"]
    deep = built.info.filter_params["nprobe"]
    assert deep >= tuned  # recall@100 needs at least what recall@10 does
    nlist = 256
    assert filtered_params(built, 1.0)["nprobe"] == tuned
    assert filtered_params(built, 0.1)["nprobe"] == deep
    for share in (0.01, 1e-4):
        expected = min(np.ceil(tuned * (deep / tuned) ** np.log10(1 / share)), nlist)
        assert filtered_params(built, share)["nprobe"] == expected
    built.info.filter_params = {"nprobe": 2 * tuned}
    assert filtered_params(built, 1e-6)["nprobe"] == nlist  # capped
    built.info.filter_params = {}  # not measured: the inverse of the share
    assert filtered_params(built, 0.25)["nprobe"] == min(4 * tuned, nlist)


def test_a_filter_with_too_few_hits_in_the_probed_lists_is_searched_again(
    lat, selector_from_1000_rows
) -> None:
    path, x, _ = lat
    built = build_index(path, kind="ivf", progress=False)
    built.info.params = {"nprobe": 1}  # one list: the filter's rows are elsewhere
    built.info.filter_params = {"nprobe": 1}
    far = np.argsort(prepare_vectors(x, "cosine", "x") @ prepare_vectors(x[:1], "cosine", "q")[0])
    view = open_latents(path).filter(id=[f"r{i}" for i in far[:1500]])  # the rows least like r0
    frame = neighbors(view, ids=["r0"], k=10, index=built)
    assert frame.attrs["search"] == "index+selector" and len(frame) == 10


def test_cli_where(lat, capsys) -> None:
    from embedkit.cli import cli, main

    path, _, _ = lat
    runner = CliRunner()
    result = runner.invoke(
        cli, ["search", str(path), "--id", "r3", "-k", "4", "--where",
              "color = 'red' AND year >= 2010", "--format", "csv"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hits = pd.read_csv(io.StringIO(result.stdout))
    assert hits["query"].tolist() == ["r3"] * 4 and set(hits["color"]) == {"red"}
    assert (hits["year"] >= 2010).all()
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(path), "--id", "r3", "--where", "colour = 'red'"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --where: no column 'colour'") and err.count("\n") == 1


def test_a_view_searched_in_another_metric_than_the_index_is_scanned_exactly(lat) -> None:
    path, x, colors = lat
    build_index(path, kind="ivf", progress=False)  # cosine
    queries = clustered(5, seed=21)
    frame = neighbors(open_latents(path).filter(color="red"), vectors=queries, k=3, metric="l2")
    assert frame.attrs["search"] == "exact subset scan" and "distance" in frame.columns
    assert "metric l2 asked for; the saved index uses cosine" in frame.attrs["search_reason"]
    d2 = ((queries[:, None, :] - x[None, colors == "red", :]) ** 2).sum(-1)
    np.testing.assert_allclose(
        frame["distance"].to_numpy()[::3], np.sort(d2, axis=1)[:, 0], rtol=1e-4
    )
