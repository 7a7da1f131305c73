"""k-means on latents: recovery of synthetic clusters, saved tables, seeding and bad input."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embedkit import BackboneInfo, InputError, open_latents, write_latents
from embedkit.algebra import centroids
from embedkit.algebra.clusters import KMeansResult, kmeans, kmeans_plus_plus

DIM = 16
TOY = BackboneInfo("toy", DIM)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """The CI box is small and shared: spinning OpenMP threads only slow tiny runs down."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI from the contingency table (Hubert & Arabie)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(n):
        return n * (n - 1) / 2

    index = pairs(table).sum()
    rows, cols = pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum()
    expected = rows * cols / pairs(len(a))
    return float((index - expected) / ((rows + cols) / 2 - expected))


def test_adjusted_rand_index_helper():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, np.array([5, 5, 9, 9, 7, 7])) == pytest.approx(1.0)
    # the textbook example: ARI = 0.24242...
    assert adjusted_rand_index(
        np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2])
    ) == pytest.approx(0.2424242, abs=1e-6)
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(0, 8, 3000), rng.integers(0, 8, 3000))) < 0.02


def blobs(n: int = 3000, k: int = 8, seed: int = 0, spread: float = 3.0):
    """``k`` Gaussian clusters of unequal sizes with unit noise around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, DIM)) * spread
    weights = rng.uniform(0.5, 1.5, k)
    truth = rng.choice(k, size=n, p=weights / weights.sum())
    x = centres[truth] + rng.standard_normal((n, DIM))
    return x.astype(np.float32), truth


@pytest.fixture
def clustered(tmp_path: Path):
    x, truth = blobs()
    path = write_latents(tmp_path / "lat", [f"p{i}" for i in range(len(x))], x, TOY)
    return path, x, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_well_separated_clusters(tmp_path, seed):
    x, truth = blobs(seed=seed + 10)
    path = write_latents(tmp_path / "lat", range(len(x)), x, TOY)
    result = kmeans(path, k=8, seed=seed)
    assert isinstance(result, KMeansResult)
    assigned = result.assignments["cluster"].to_numpy()
    assert adjusted_rand_index(truth, assigned) > 0.9
    assert result.sizes.sum() == len(x) and len(result.sizes) == 8
    np.testing.assert_array_equal(np.sort(result.sizes), np.sort(np.bincount(truth)))
    assert result.centroids.shape == (8, DIM)
    assert result.normalized is False


def test_assignments_and_inertia_are_consistent(clustered):
    path, x, _ = clustered
    result = kmeans(path, k=8)
    frame = result.assignments
    assert frame.columns.tolist() == ["id", "cluster", "distance"]
    assert frame["id"].tolist() == [f"p{i}" for i in range(len(x))]
    assert frame["cluster"].dtype == np.int32
    cluster = frame["cluster"].to_numpy()
    squared = ((x - result.centroids[cluster]) ** 2).sum(1)
    np.testing.assert_allclose(frame["distance"], squared, rtol=1e-3, atol=1e-3)
    # each point sits with its nearest centroid, and centroids are the means of their points
    nearest = ((x[:, None] - result.centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(cluster, nearest)
    for c in range(8):
        np.testing.assert_allclose(result.centroids[c], x[cluster == c].mean(0), atol=1e-3)
    # roughly DIM units of noise variance per point
    assert result.inertia == pytest.approx(squared.sum(), rel=1e-2)
    assert 0.8 * DIM * len(x) < result.inertia < 1.2 * DIM * len(x)


def test_same_seed_same_result(clustered):
    path, _, _ = clustered
    a, b = kmeans(path, k=5, seed=3), kmeans(path, k=5, seed=3)
    pd.testing.assert_frame_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_save_writes_a_joinable_labels_table(clustered):
    path, x, _ = clustered
    result = kmeans(path, k=8)
    out = result.save(path, name="grp")
    assert out == path / "clusters" / "grp.parquet"
    table = pd.read_parquet(out)
    assert table.columns.tolist() == ["id", "grp", "distance"]
    assert table["grp"].tolist() == result.assignments["cluster"].tolist()
    assert not list((path / "clusters").glob(".*.tmp"))

    frame = centroids(path, by="grp", labels=out)
    assert frame["label"].tolist() == list(range(8))
    np.testing.assert_array_equal(frame["n"], result.sizes)
    np.testing.assert_allclose(np.stack(frame["centroid"]), result.centroids, atol=1e-3)

    saved = pq.read_table(path / "clusters" / "grp_centroids.parquet")
    assert saved.column("cluster").to_pylist() == list(range(8))
    stacked = np.array(saved.column("centroid").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(stacked, result.centroids)
    # the clusters folder does not disturb the latent dataset
    assert len(open_latents(path)) == len(x)


def test_spherical_when_the_dataset_is_normalized(tmp_path):
    x, truth = blobs(n=1200, k=4, seed=7)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    path = write_latents(tmp_path / "lat", range(len(x)), unit, TOY, normalized=True)
    result = kmeans(path, k=4)
    assert result.normalized is True
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-4)
    assert adjusted_rand_index(truth, result.assignments["cluster"].to_numpy()) > 0.9
    assert kmeans(path, k=4, normalize=False).normalized is False


def test_normalize_override_on_raw_latents(clustered):
    path, _, _ = clustered
    result = kmeans(path, k=8, normalize=True)
    assert result.normalized is True
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-4)
    # the stored latents are untouched by the in-place normalization
    assert np.linalg.norm(open_latents(path).to_numpy(), axis=1).max() > 2.0


@pytest.mark.parametrize("k", [0, -1, 3001])
def test_k_out_of_range(clustered, k):
    path, _, _ = clustered
    with pytest.raises(InputError) as exc:
        kmeans(path, k=k)
    assert f"k={k}" in str(exc.value) and "3000" in str(exc.value)


def test_k_equal_to_n_is_allowed(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, DIM)).astype(np.float32)
    path = write_latents(tmp_path / "lat", range(6), x, TOY)
    result = kmeans(path, k=6)
    np.testing.assert_array_equal(np.sort(result.sizes), np.ones(6))
    assert result.inertia == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_latents_are_refused(tmp_path, bad):
    x = np.random.default_rng(0).standard_normal((20, DIM)).astype(np.float32)
    x[5, 2] = bad
    path = write_latents(tmp_path / "lat", range(20), x, TOY)
    with pytest.raises(InputError, match="NaN or inf"):
        kmeans(path, k=2)


def test_kmeans_plus_plus_returns_k_distinct_rows():
    x, _ = blobs(n=2000, k=8, seed=3)
    seeds = kmeans_plus_plus(x, 8, seed=0)
    assert seeds.shape == (8, DIM) and seeds.dtype == np.float32
    assert seeds.flags["C_CONTIGUOUS"]
    rows = {tuple(r) for r in seeds}
    assert len(rows) == 8
    assert rows <= {tuple(r) for r in x}
    np.testing.assert_array_equal(seeds, kmeans_plus_plus(x, 8, seed=0))
    # seeding spreads out: on well-separated blobs it lands one seed in (nearly) every blob
    _, truth = blobs(n=2000, k=8, seed=3)
    index = {tuple(r): i for i, r in enumerate(x)}
    assert len({truth[index[tuple(r)]] for r in seeds}) >= 7


def test_kmeans_plus_plus_with_fewer_distinct_points_than_k():
    x = np.repeat(np.eye(3, DIM, dtype=np.float32), 10, axis=0)
    seeds = kmeans_plus_plus(x, 5)
    assert seeds.shape == (5, DIM)
    assert len({tuple(r) for r in seeds}) == 3


def test_kmeans_plus_plus_samples_large_inputs():
    x = np.random.default_rng(0).standard_normal((500, DIM)).astype(np.float32)
    seeds = kmeans_plus_plus(x, 4, sample=100)
    assert seeds.shape == (4, DIM)
    assert {tuple(r) for r in seeds} <= {tuple(r) for r in x}


# -- never write into what the dataset returned ---------------------------------------
@pytest.fixture
def frozen_reads(tmp_path: Path, monkeypatch):
    """Latents whose ``to_numpy``/``vectors_of`` return one read-only array, as a zero-copy
    view of an Arrow buffer is; returns (path, that array, a copy to compare with)."""
    from embedkit.store.dataset import LatentDataset

    x, truth = blobs(n=400, k=4, seed=3)
    path = write_latents(
        tmp_path / "lat", [f"p{i}" for i in range(len(x))], x, TOY,
        columns={"kind": truth.astype(str)},
    )  # fmt: skip
    read = open_latents(path).to_numpy()
    assert not read.flags.writeable  # the real read is an Arrow view already
    frozen = read.copy()
    frozen.flags.writeable = False
    monkeypatch.setattr(LatentDataset, "to_numpy", lambda self: frozen)
    monkeypatch.setattr(LatentDataset, "vectors_of", lambda self, ids: frozen[: len(ids)])
    return path, frozen, read.copy()


def test_kmeans_normalize_does_not_write_into_the_read_array(frozen_reads):
    """faiss.normalize_L2 writes through the raw pointer, read-only flag or not."""
    path, frozen, before = frozen_reads
    result = kmeans(path, k=4, normalize=True)
    np.testing.assert_array_equal(frozen, before)
    assert result.normalized
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-4)


def test_algebra_never_writes_into_the_read_array(frozen_reads):
    from embedkit.algebra import attribute_vectors, labeled, vectors_for_ids

    path, frozen, before = frozen_reads
    kmeans(path, k=4, normalize=False)
    centroids(path, by="kind", normalize=True)
    attribute_vectors(path, ["kind"])
    out = labeled(path, ["kind"])
    out.vectors[:] = 0  # what labeled() hands out is the caller's to change
    vectors_for_ids(path, ["p0", "p1"])[:] = 0
    np.testing.assert_array_equal(frozen, before)
