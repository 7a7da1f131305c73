"""``auto`` by measurement (embedkit/index/select.py) and the recall promise
(embedkit/index/tune.py): tie-aware recall, the lower confidence bound, the check after
the held-out rows are added, and recall on fresh queries."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from embedkit.index import build_index, index_dir
from embedkit.index.choose import candidate_choices, parse_memory, resized_factory
from embedkit.index.metric import prepare_vectors
from embedkit.index.select import measures_auto, sample_rows
from embedkit.index.tune import (
    Truth,
    Tuned,
    add_held_out,
    recall_at_k,
    recall_lower_bound,
    recall_per_query,
)
from embedkit.plugins.info import BackboneInfo
from embedkit.store.writer import write_latents

ROWS, DIM, FRESH = 30_000, 32, 1000


def clustered(n: int, dim: int, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Gaussian clusters: centres ~ N(0, 1), spread 0.5 per dimension, labels i.i.d."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return centres[labels] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)


def write(path: Path, x: np.ndarray) -> Path:
    ids = [f"r{i}" for i in range(len(x))]
    return write_latents(path, ids, x, BackboneInfo("test-encoder", dim=x.shape[1]))


def fresh_recall(built, x: np.ndarray, fresh: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``built`` on queries that are not rows of it, against exact distances."""
    base = prepare_vectors(x, "cosine", "x")
    queries = prepare_vectors(fresh, "cosine", "q")
    dist, ids = faiss.knn(queries, base, 2 * k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = Truth.from_knn(queries, dist, ids, k, similarity=True)
    found = built.search(queries, k)[1]
    rows = np.array([int(i[1:]) for i in built.ids])[np.maximum(found, 0)]
    rows = np.where(found >= 0, rows, -1)
    exact = np.einsum("qkd,qd->qk", base[np.maximum(rows, 0)], queries)
    return float(recall_per_query(rows, truth, exact).mean())


@pytest.fixture(scope="module")
def mid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """30k x 32 clustered rows, and 1000 fresh queries from the same clusters."""
    data = clustered(ROWS + FRESH, DIM)
    x, fresh = data[:ROWS], data[ROWS:]
    return write(tmp_path_factory.mktemp("mid") / "lat", x), x, fresh


@pytest.fixture(scope="module")
def auto_built(mid):
    return build_index(mid[0], progress=False)  # saved: index.json is read below


# -- the candidates ------------------------------------------------------------------
def test_candidates_follow_the_memory_budget() -> None:
    every = candidate_choices(100_000, 128)
    assert [c.kind for c in every] == ["flat", "hnsw", "ivf", "ivfsq", "ivfpq"]
    assert every[3].factory == "IVF1024,SQ8,RFlat"
    # 60MB: HNSW (~77MB) and SQ8 + RFlat (~65MB) do not fit; Flat (51MB), IVF-Flat (~53MB)
    # and the SQ8 codes alone (~14MB) do
    fits = candidate_choices(100_000, 128, parse_memory("60MB"))
    assert [c.factory for c in fits] == [
        "Flat",
        "IVF1024,Flat",
        "IVF1024,SQ8",
        "IVF1024,PQ64x4fs,RFlat",
    ]
    assert all(c.estimated_bytes <= parse_memory("60MB") for c in fits)
    tight = candidate_choices(100_000, 128, parse_memory("3MB"))
    assert [c.factory for c in tight] == ["IVF1024,PQ32x4fs"]  # codes only, m shrunk
    assert resized_factory("IVF4096,PQ64x4fs,RFlat", 100_000) == "IVF1024,PQ64x4fs,RFlat"
    assert resized_factory("HNSW32", 10) == "HNSW32"
    assert sample_rows(30_000, 32) == 10_000 and sample_rows(1_000_000, 128) == 100_000
    assert sample_rows(400_000, 4096) == 16_384  # 256 MiB of float32 at most
    assert measures_auto("auto", 4096, 128, False, 1000)  # 2 MiB of vectors
    assert not measures_auto("auto", 4095, 128, False, 1000)  # below: Flat by rule
    assert not measures_auto("auto", 999, 1024, False, 1000)  # too few rows to sample
    assert not measures_auto("auto", 50_000, 32, True, 1000)  # GPU builds keep the rules
    assert not measures_auto("auto", 50_000, 32, False, 0)  # recall not measured
    assert not measures_auto("hnsw", 50_000, 32, False, 1000)


# -- auto by measurement ---------------------------------------------------------------
def test_auto_chooses_by_measurement_and_records_it(mid, auto_built) -> None:
    info = auto_built.info
    sel = info.selection
    assert sel["chosen"] == info.factory and info.requested_kind == "auto"
    assert sel["sample_rows"] + sel["queries"] == sample_rows(ROWS, DIM)
    assert sel["small_rows"] == sel["sample_rows"] // 4
    kinds = [c["kind"] for c in sel["candidates"]]
    assert kinds == ["flat", "hnsw", "ivf", "ivfsq", "ivfpq"]
    for c in sel["candidates"]:
        assert c["qps_sample"] > 0 and c["qps_predicted"] > 0 and 0 <= c["exponent"] <= 1
        assert 0 <= c["recall_lower"] <= c["recall"] <= 1 and c["build_seconds"] >= 0
        assert c["reached"] == (c["recall_lower"] >= info.target_recall)
    flat = sel["candidates"][0]
    assert flat["recall"] == 1.0 and flat["params"] == {} and flat["exponent"] == 1.0
    reached = [c for c in sel["candidates"] if c["reached"]]
    fastest = max(reached, key=lambda c: c["qps_predicted"])
    assert fastest["factory"] == info.factory  # the fastest that reached the target
    assert info.reason.startswith("auto, fastest measured") and "predicted" in info.reason
    # measured once more after the full build, and saved
    assert info.recall_lower >= info.target_recall and info.recall >= info.recall_lower
    assert info.recall_after_add is not None
    assert 0 < sel["seconds"] < info.build_seconds
    saved = json.loads((index_dir(mid[0]) / "index.json").read_text())
    assert saved["selection"] == sel and saved["recall_lower"] == info.recall_lower


def test_promised_recall_holds_on_fresh_queries(mid, auto_built) -> None:
    _, x, fresh = mid
    assert fresh_recall(auto_built, x, fresh) >= 0.95


def test_hnsw_promise_holds_on_fresh_queries(mid) -> None:
    """The kind whose recall fell below its promise on new queries before the bound."""
    path, x, fresh = mid
    built = build_index(path, kind="hnsw", progress=False, save=False)
    info = built.info
    assert info.selection == {} and info.kind == "hnsw"  # explicit kinds are not measured
    assert info.recall_lower >= 0.95 and info.recall_after_add is not None
    assert fresh_recall(built, x, fresh) >= 0.95


def test_cli_index_says_how_auto_chose(mid) -> None:
    from embedkit.cli import cli

    result = CliRunner().invoke(cli, ["index", str(mid[0]), "--no-gpu"])
    assert result.exit_code == 0, result.output
    assert "chosen     by measurement on" in result.output
    assert "recall@10" in result.output and "bound" in result.output


def test_small_auto_is_flat_without_measuring(tmp_path: Path) -> None:
    path = write(tmp_path / "lat", clustered(5_000, 16))  # 80k floats < 2 MiB
    info = build_index(path, progress=False, save=False).info
    assert info.kind == "flat" and info.selection == {} and info.recall == 1.0


# -- recall against exact distances ------------------------------------------------------
def test_ties_and_duplicates_count_as_hits() -> None:
    # one query; rows 0..5 are at distance 1.0 (duplicates), row 6 at 2.0 (L2)
    truth = Truth.from_knn(
        np.zeros((1, 2), np.float32),
        np.array([[1.0, 1.0, 1.0, 2.0]], np.float32),
        np.array([[0, 1, 2, 6]]),
        k=3,
        similarity=False,
    )
    found = np.array([[3, 4, 5]])  # three other duplicates: no id in common
    assert recall_at_k(found, truth.ids[:, :3]) == 0.0
    assert recall_per_query(found, truth, np.full((1, 3), 1.0, np.float32))[0] == 1.0
    # a float rounding away from the k-th distance is still a tie; a worse one is not
    assert recall_per_query(found, truth, np.array([[1.0, 1.0 + 1e-7, 2.0]]))[0] == 2 / 3
    # without exact distances a row is a hit only if the truth lists it within the tie
    assert recall_per_query(np.array([[0, 6, -1]]), truth)[0] == 1 / 3
    assert recall_per_query(np.array([[2, 1, 0]]), truth)[0] == 1.0


def test_duplicated_latents_reach_recall(tmp_path: Path) -> None:
    """300 distinct vectors, 40 copies each: any 10 copies of the nearest are right."""
    distinct = clustered(300, 16, clusters=10, seed=3)
    x = np.repeat(distinct, 40, axis=0)
    path = write(tmp_path / "lat", x)
    for kind in ("hnsw", "ivf", "ivfpq"):
        info = build_index(path, kind=kind, progress=False, save=False).info
        assert info.recall >= 0.95 and info.recall_lower >= 0.95, (kind, info)


def test_recall_lower_bound() -> None:
    assert recall_lower_bound(np.ones(1000)) == 1.0
    per = np.r_[np.ones(950), np.zeros(50)]  # mean 0.95
    bound = recall_lower_bound(per)
    assert bound == pytest.approx(0.95 - 2 * per.std(ddof=1) / np.sqrt(1000))
    assert bound < 0.95 < per.mean() + 1e-12
    assert recall_lower_bound(per[::10]) < bound  # same mean, fewer queries: wider margin


# -- the check after the held-out rows are added ---------------------------------------------
def _ivf_with_held_out(n: int = 4000, held: int = 400):
    x = prepare_vectors(clustered(n + held, 16, seed=4), "cosine", "x")
    base, queries = x[:n], x[n:]
    index = faiss.index_factory(16, "IVF32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    dist, ids = faiss.knn(queries, base, 20, metric=faiss.METRIC_INNER_PRODUCT)
    truth = Truth.from_knn(queries, dist, ids, 10, similarity=True)

    def knn(xq, xb, kk):
        return faiss.knn(xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)

    return index, queries, truth, knn


def test_held_out_rows_added_with_a_check() -> None:
    index, queries, truth, knn = _ivf_with_held_out()
    tuned = Tuned({"nprobe": 32}, 1.0, 1.0, np.ones(len(queries)))
    final, check, order = add_held_out(index, queries, truth, tuned, knn, 0.95)
    assert index.ntotal == 4000 + 400 and not check.retuned and final is tuned
    assert sorted(np.concatenate(order).tolist()) == list(range(400))
    assert check.recall == 1.0 and check.dropped == 0.0  # exhaustive: nothing to lose


def test_recall_drop_after_the_add_is_retuned(monkeypatch: pytest.MonkeyPatch) -> None:
    """When recall falls once the first half is in, the parameters are raised again."""
    import embedkit.index.tune as tuning

    index, queries, truth, knn = _ivf_with_held_out()
    real = tuning.measure_recall

    def measure(index, queries, truth, params, *search):  # after the add, nprobe < 8 loses 10 %
        got = real(index, queries, truth, params, *search)
        if index.ntotal > 4000 and params.get("nprobe", 0) < 8:
            got.per_query = got.per_query * 0.9
            got.recall, got.lower = got.per_query.mean(), recall_lower_bound(got.per_query)
        return got

    monkeypatch.setattr(tuning, "measure_recall", measure)
    tuned = Tuned({"nprobe": 3}, 0.97, 0.96, np.ones(len(queries)))
    final, check, _ = add_held_out(index, queries, truth, tuned, knn, 0.95)
    assert check.retuned and check.dropped > 0.05
    assert final.params["nprobe"] >= 8 and final.reaches(0.95)
    assert faiss.extract_index_ivf(index).nprobe == final.params["nprobe"]
    assert index.ntotal == 4400


def test_auto_falls_back_when_its_pick_falls_short_on_all_rows(
    mid, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pick that reached the target on the sample but not on all rows is replaced by the
    next candidate, and both are recorded."""
    import embedkit.index.select as select
    from embedkit.index.choose import IndexChoice

    real_rank = select.rank

    def rank(measured, choices, target):  # put a hopeless index first
        short = IndexChoice("custom", "IVF64,PQ2x4fs", "auto, rigged for the test")
        return [short, *real_rank(measured, choices, target)]

    monkeypatch.setattr(select, "rank", rank)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the next candidate kept the promise
        built = build_index(mid[0], progress=False, save=False)
    info = built.info
    fallbacks = info.selection["fallbacks"]
    assert [f["factory"] for f in fallbacks] == ["IVF64,PQ2x4fs"]
    assert fallbacks[0]["lower"] < 0.95
    assert info.factory == info.selection["chosen"] != "IVF64,PQ2x4fs"
    assert info.recall_lower >= 0.95 and built.ntotal == ROWS
    assert fresh_recall(built, mid[1], mid[2]) >= 0.95


def test_tuning_settles_between_ladder_steps() -> None:
    """The tuned nprobe is the smallest that reaches the target to within 5 %, not the next
    ladder step (19 % apart): here it lies between two steps, and 6 % less falls short."""
    from embedkit.index.tune import NPROBES, measure_recall, tune

    rng = np.random.default_rng(1)  # no clusters: many probes needed
    x = prepare_vectors(rng.normal(size=(12_000, 16)).astype(np.float32), "cosine", "x")
    base, queries = x[:11_000], x[11_000:]
    index = faiss.index_factory(16, "IVF256,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    dist, ids = faiss.knn(queries, base, 20, metric=faiss.METRIC_INNER_PRODUCT)
    truth = Truth.from_knn(queries, dist, ids, 10, similarity=True)
    tuned = tune(index, queries, truth, 0.95)
    nprobe = tuned.params["nprobe"]
    assert tuned.reaches(0.95) and faiss.extract_index_ivf(index).nprobe == nprobe
    assert nprobe not in NPROBES  # found between the ladder's steps
    below = int(nprobe // 1.06)
    assert not measure_recall(index, queries, truth, {"nprobe": below}).reaches(0.95)
