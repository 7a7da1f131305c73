"""FAISS index build / tune / save / load (embedkit.index, embedkit.index_params)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit.errors import InputError
from embedkit.index import build_index, index_dir, load_index
from embedkit.index.choose import choose_index, ivf_nlist, parse_memory, pq_m
from embedkit.index.gpu import clear_gpu_resources
from embedkit.index.metric import prepare_vectors
from embedkit.index.search import clear_index_cache, neighbors
from embedkit.index.tune import recall_at_k
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.writer import write_latents

BACKBONE = BackboneInfo("test-encoder", dim=64, config={"seed": 0})


def clustered(n: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Gaussian clusters: centres ~ N(0, 1), spread 0.5 per dimension."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return centres[labels] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)


def make_latents(path: Path, x: np.ndarray, start: int = 0, **kwargs) -> Path:
    ids = [f"r{i}" for i in range(start, start + len(x))]
    info = BackboneInfo("test-encoder", dim=x.shape[1], config={"seed": 0})
    return write_latents(path, ids, x, info, columns={"group": np.arange(len(x)) % 7}, **kwargs)


def exact_ids(x: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        order = np.argsort(-(queries @ x.T), axis=1)
    else:
        d2 = (queries**2).sum(1)[:, None] - 2 * queries @ x.T + (x**2).sum(1)[None, :]
        order = np.argsort(d2, axis=1)
    return order[:, :k]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """20k x 64 vectors in 50 gaussian clusters."""
    x = clustered(20_000)
    return make_latents(tmp_path_factory.mktemp("big") / "lat", x), x


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = clustered(3_000, dim=32, clusters=20, seed=1)
    return make_latents(tmp_path / "lat", x), x


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


# -- the rules ---------------------------------------------------------------------
def test_parse_memory() -> None:
    assert parse_memory("2GB") == 2 << 30
    assert parse_memory("512 MiB") == 512 << 20
    assert parse_memory("1.5g") == int(1.5 * (1 << 30))
    assert parse_memory(1000) == 1000
    assert parse_memory(None) is None
    for bad in ("lots", "-1GB", 0, "2XB"):
        with pytest.raises(InputError, match="memory budget"):
            parse_memory(bad)


def test_nlist_and_pq_m() -> None:
    assert ivf_nlist(20_000) == 512
    assert ivf_nlist(100_000) == 1024
    assert ivf_nlist(1_000_000) == 4096
    assert ivf_nlist(10**10) == 65_536
    assert ivf_nlist(1_000) == 16  # clamped up to the minimum, but never above n/39 ...
    assert ivf_nlist(100) == 2  # ... which wins for tiny sets
    assert pq_m(64) == 32 and pq_m(768) == 384 and pq_m(100) == 50 and pq_m(3) == 1


def test_auto_rules_depend_on_size_budget_and_gpu() -> None:
    assert choose_index(19_999, 128).kind == "flat"
    assert choose_index(20_000, 128).factory == "HNSW32"
    assert choose_index(999_999, 128, parse_memory("64GB")).factory == "HNSW32"
    assert choose_index(1_000_000, 128, parse_memory("64GB")).factory == "IVF4096,Flat"
    # a GPU build avoids HNSW (no GPU version)
    assert choose_index(100_000, 128, gpu=True).factory == "IVF1024,Flat"
    # memory-constrained: HNSW (~77MB) and IVF-Flat (~52MB) do not fit 40MB -> IVF-PQ + refine
    constrained = choose_index(100_000, 128, parse_memory("40MB"))
    assert constrained.kind == "ivfpq" and constrained.factory.startswith("IVF1024,PQ64x4fs,")
    assert constrained.estimated_bytes <= parse_memory("40MB")
    # very tight: PQ codes alone, m reduced until they fit
    tight = choose_index(100_000, 128, parse_memory("3MB"))
    assert tight.factory == "IVF1024,PQ32x4fs"
    assert tight.estimated_bytes <= parse_memory("3MB")


# -- recall ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("auto", None), ("ivf", "ivf"), ("hnsw", "hnsw"), ("ivfpq", "ivfpq"), ("ivfsq", "ivfsq")],
)
def test_recall_at_10_reaches_target(big, kind: str, expected: str | None) -> None:
    path, x = big
    built = build_index(path, kind=kind, progress=False, save=False)
    info = built.info
    if expected is None:  # auto measures the candidates at 20k rows (test_select.py)
        assert info.selection["chosen"] == info.factory
        assert info.kind in {"flat", "hnsw", "ivf", "ivfpq"}
    else:
        assert info.kind == expected and info.selection == {}
    assert info.recall >= 0.95 and info.recall_lower >= 0.95, info
    assert info.ntotal == len(x) and info.recall_queries == 1000
    if expected in ("ivf", "ivfpq", "ivfsq"):
        assert info.params["nprobe"] >= 1
    # independent check on other queries, against numpy brute force
    rng = np.random.default_rng(123)
    queries = x[rng.choice(len(x), 200, replace=False)]
    truth = exact_ids(x, queries, 10, "cosine")
    prepared = prepare_vectors(queries, "cosine", "q")
    found = built.search(prepared, 10)[1]
    # faiss rows -> dataset rows ("r123" -> 123): the recall queries were added last
    rows = np.array([int(i[1:]) for i in built.ids])[found]
    assert recall_at_k(rows, truth) >= 0.93


def test_auto_small_is_exact_and_matches_numpy(small) -> None:
    path, x = small
    built = build_index(path, metric="l2", progress=False, save=False)
    assert built.info.kind == "flat" and built.info.recall == 1.0
    queries = x[:50]
    found = built.search(np.ascontiguousarray(queries), 5)[1]
    np.testing.assert_array_equal(found, exact_ids(x, queries, 5, "l2"))


def test_recall_sample_zero_uses_defaults(small) -> None:
    path, _ = small
    info = build_index(path, kind="ivf", recall_sample=0, progress=False, save=False).info
    assert info.recall is None and info.params == {"nprobe": 16}


def test_float16_latents(tmp_path: Path) -> None:
    x = clustered(2_000, dim=32, clusters=10)
    path = make_latents(tmp_path / "lat", x, dtype="float16")
    built = build_index(path, kind="hnsw", progress=False)
    assert built.info.recall >= 0.95
    assert built.index.ntotal == 2_000


def test_custom_factory_string(small) -> None:
    path, _ = small
    info = build_index(path, kind="IVF32,SQ8", progress=False, save=False).info
    assert info.kind == "custom" and info.factory == "IVF32,SQ8" and "nprobe" in info.params


# -- persistence ---------------------------------------------------------------------------
def test_save_load_roundtrip_and_mmap(small) -> None:
    path, x = small
    built = build_index(path, kind="ivf", progress=False)
    folder = index_dir(path)
    assert built.path == folder
    names = {p.name for p in folder.iterdir()}
    assert names == {"index.faiss", "ids.parquet", "recall.npz", "index.json"}
    data = json.loads((folder / "index.json").read_text())
    for key in ("metric", "kind", "factory", "params", "ntotal", "dim", "recall", "k"):
        assert key in data
    assert data["fingerprint"] == open_latents(path).fingerprint()
    assert data["backbone"]["name"] == "test-encoder" and data["embedkit_version"]
    assert data["build_seconds"] >= 0 and data["params"]["nprobe"] >= 1

    queries = prepare_vectors(x[:100], "cosine", "q")
    expected = built.search(queries, 10)
    for mmap in (False, True):
        loaded = load_index(path, mmap=mmap)
        assert loaded.info.params == built.info.params
        np.testing.assert_array_equal(loaded.ids, built.ids)
        got = loaded.search(queries, 10)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)


def test_load_without_index(small) -> None:
    path, _ = small
    with pytest.raises(InputError, match=r"no index in .*embedkit index"):
        load_index(path)


def test_stale_index_detected_and_rebuilt(small) -> None:
    path, x = small
    build_index(path, kind="flat", progress=False)
    make_latents(path, clustered(100, dim=32, seed=9), start=len(x))  # append a part
    cheapest = r"stale: 1 part added \(100 rows\) .*; update it in place with `embedkit index"
    with pytest.raises(InputError, match=cheapest) as err:
        load_index(path)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="stale"):
        neighbors(path, ids=["r0"], k=3)
    rebuilt = load_index(path, rebuild=True)
    assert rebuilt.ntotal == len(x) + 100
    assert load_index(path).ntotal == len(x) + 100  # saved, fresh again
    assert len(neighbors(path, ids=["r3050"], k=3)) == 3


def rewrite_part(part: Path, seed: int) -> None:
    """Replace ``part`` with one holding the same ids, rows, schema, metadata and byte size
    but other vectors: the rows' vectors shuffled (stored uncompressed, with the same
    min/max statistics, so not one byte more or less)."""
    table = pq.read_table(part)
    old = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    new = old[np.random.default_rng(seed).permutation(len(old))]
    assert not np.array_equal(new, old)
    field = table.schema.field("embedding")
    column = pa.array(list(new), type=field.type)
    table = table.set_column(table.schema.get_field_index("embedding"), field, column)
    group = pq.ParquetFile(part).metadata.row_group(0)
    chunks = [group.column(i) for i in range(group.num_columns)]
    codecs = {c.path_in_schema: c.compression.replace("UNCOMPRESSED", "NONE") for c in chunks}
    tmp = part.with_name(".rewrite.tmp")
    pq.write_table(  # with the writer's own per-column compression and dictionaries
        table,
        tmp,
        compression=codecs,
        use_dictionary=[c.path_in_schema for c in chunks if "RLE_DICTIONARY" in c.encodings],
    )
    size = part.stat().st_size
    os.replace(tmp, part)
    assert part.stat().st_size == size


def test_part_rewritten_with_same_ids_and_size_is_stale(small) -> None:
    path, _ = small
    build_index(path, kind="flat", progress=False)
    assert len(neighbors(path, ids=["r0"], k=3)) == 3  # the saved index is now cached
    load_index(path)
    before = len(open_latents(path))
    rewrite_part(open_latents(path).files[0], seed=5)
    assert len(open_latents(path)) == before
    with pytest.raises(InputError, match="stale"):
        neighbors(path, ids=["r0"], k=3)  # not served from the cache either
    with pytest.raises(InputError, match=r"stale: 1 part rewritten.*update it in place") as err:
        load_index(path)
    assert "\n" not in str(err.value)
    assert load_index(path, rebuild=True).ntotal == before
    queries = [f"r{i}" for i in range(20)]
    exact = neighbors(path, ids=queries, k=3, index="exact")
    assert neighbors(path, ids=queries, k=3)["id"].tolist() == exact["id"].tolist()


# -- GPU ------------------------------------------------------------------------------------
def test_gpu_branch_with_mocked_faiss(small, monkeypatch: pytest.MonkeyPatch) -> None:
    """get_num_gpus() -> 1 and the cloners mocked: the GPU code path runs on CPU indexes."""
    clear_gpu_resources()
    calls: list[str] = []

    def to_gpu(res, device, index, options=None):
        calls.append(f"to_gpu:{type(faiss.downcast_index(index)).__name__}")
        return faiss.clone_index(index)

    def to_cpu(index):
        calls.append("to_cpu")
        return index

    def knn_gpu(res, xq, xb, k, metric=faiss.METRIC_L2):
        calls.append("knn_gpu")
        return faiss.knn(xq, xb, k, metric=metric)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", to_cpu)
    monkeypatch.setattr(faiss, "knn_gpu", knn_gpu)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object())
    monkeypatch.setattr(faiss, "GpuIndex", faiss.Index)  # every clone counts as a GPU index

    path, _ = small
    ivf = build_index(path, kind="ivf", progress=False)
    assert ivf.info.built_on == "gpu" and ivf.on_gpu
    assert "to_gpu:IndexIVFFlat" in calls and "knn_gpu" in calls and "to_cpu" in calls
    assert ivf.info.recall >= 0.95
    assert load_index(path).gpu_index is None  # gpu=None: a GPU copy once a search pays
    assert load_index(path, gpu=True).gpu_index is not None
    assert load_index(path, gpu=False).on_gpu is False

    calls.clear()
    hnsw = build_index(path, kind="hnsw", progress=False, save=False)
    assert hnsw.info.built_on == "cpu" and not any(c.startswith("to_gpu") for c in calls)

    calls.clear()  # auto on a GPU prefers IVF over HNSW
    assert choose_index(50_000, 32, gpu=True).kind == "ivf"
    flat = build_index(path, kind="flat", progress=False, save=False, gpu=False)
    assert flat.info.built_on == "cpu" and calls == []
    clear_gpu_resources()  # they hold this test's stand-in resources


def test_gpu_true_without_gpu_is_an_error(small, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(InputError, match="no GPU"):
        build_index(small[0], gpu=True, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a CUDA GPU")
def test_real_gpu_build_matches_cpu(big) -> None:
    path, x = big
    gpu = build_index(path, kind="ivf", progress=False, save=False, gpu=True)
    assert gpu.on_gpu and gpu.info.built_on == "gpu" and gpu.info.recall >= 0.95
    flat_gpu = build_index(path, kind="flat", progress=False, save=False, gpu=True)
    flat_cpu = build_index(path, kind="flat", progress=False, save=False, gpu=False)
    q = prepare_vectors(x[:100], "cosine", "q")
    # same neighbours up to float summation order (near-ties may swap)
    assert recall_at_k(flat_gpu.search(q, 10)[1], flat_cpu.search(q, 10)[1]) >= 0.99
    saved = build_index(path, kind="ivf", progress=False, gpu=True)  # saved as a CPU index
    assert load_index(path, gpu=False).info.built_on == "gpu"
    assert not isinstance(faiss.read_index(str(saved.path / "index.faiss")), faiss.GpuIndex)


# -- bad input ------------------------------------------------------------------------------
def test_bad_inputs(small, tmp_path: Path) -> None:
    path, _ = small
    with pytest.raises(InputError, match="unknown index kind 'hsnw'"):
        build_index(path, kind="hsnw", progress=False)
    with pytest.raises(InputError, match="metric 'dot'"):
        build_index(path, metric="dot", progress=False)
    with pytest.raises(InputError, match="k must be"):
        build_index(path, k=0, progress=False)
    with pytest.raises(InputError, match="no rows to index"):
        build_index(open_latents(path).filter(group=99), progress=False, save=False)
    with pytest.raises(InputError, match="filtered view cannot be saved"):
        build_index(open_latents(path).filter(group=1), progress=False, save=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no part"):
        build_index(tmp_path / "empty", progress=False)


def test_nan_latents_rejected(tmp_path: Path) -> None:
    x = clustered(500, dim=16)
    x[42, 3] = np.nan
    path = make_latents(tmp_path / "lat", x)
    with pytest.raises(InputError, match="NaN or inf"):
        build_index(path, progress=False)


def test_filtered_view_in_memory(small) -> None:
    path, _ = small
    view = open_latents(path).filter(group=3)
    built = build_index(view, kind="flat", progress=False)  # save defaults to False
    assert built.path is None and built.ntotal == len(view)
    assert not index_dir(path).exists()


# -- CLI -------------------------------------------------------------------------------------
def test_cli_index(small) -> None:
    from embedkit.cli import cli

    path, _ = small
    result = CliRunner().invoke(cli, ["index", str(path), "--kind", "ivf", "--no-gpu"])
    assert result.exit_code == 0, result.output
    assert "ivf (IVF" in result.output and "recall@10" in result.output
    assert "ntotal     3,000" in result.output
    assert (index_dir(path) / "index.faiss").is_file()
