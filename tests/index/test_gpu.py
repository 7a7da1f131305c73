"""faiss on the GPU (embedkit.index.gpu and its callers): IVF training keeps its GPU
clustering index alive, sizing from GPU memory (one GPU, shards, or the CPU), a GPU copy
only when a search pays for it, faiss' GPU limits (k, nprobe <= 2048) and one set of
resources per device.

Without a GPU the logic runs against :class:`FakeGpu`: faiss "sees" GPUs whose clones
are CPU copies that refuse what a real GPU index refuses. The ``gpu``-marked tests at the
end run the same paths on a real GPU.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from embedkit.index import build_index, load_index
from embedkit.index import gpu as gpu_module
from embedkit.index.build import plan_build
from embedkit.index.choose import GPU_RESERVE, gpu_memory_budget, usable_gpu_bytes
from embedkit.index.gpu import (
    GPU_MAX_K,
    GpuHelper,
    clear_gpu_resources,
    gpu_limit,
    gpu_pays,
    gpu_placement,
    gpu_resources,
    to_gpu,
)
from embedkit.index.metric import prepare_vectors
from embedkit.index.search import clear_index_cache, neighbors
from embedkit.index.tune import recall_at_k
from embedkit.plugins.info import BackboneInfo
from embedkit.store.writer import write_latents

GIB = 1 << 30
#: what faiss can put on a GPU (everything else raises "not implemented")
GPU_TYPES = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ)


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(
        np.float32
    )


def make_latents(path: Path, x: np.ndarray) -> Path:
    ids = [f"r{i}" for i in range(len(x))]
    info = BackboneInfo("test-encoder", dim=x.shape[1], config={"seed": 0})
    return write_latents(path, ids, x, info, columns={"group": np.arange(len(x)) % 7})


class FakeGpu:
    """faiss seeing GPUs with ``free`` bytes free (None: unknown, one GPU). A clone is a
    CPU copy whose search refuses k or nprobe > 2048, as faiss' GPU indexes do."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free: list[int] | None) -> None:
        self.free = free
        self.resources: list[object] = []  # every StandardGpuResources made
        self.clones: list[tuple[str, tuple[int, ...], bool]] = []  # type, devices, shard
        self.made: list[weakref.ref] = []  # each clone, weakly
        self.knn = self.to_cpu_calls = 0
        self._addresses: set[int] = set()
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1 if free is None else len(free))
        monkeypatch.setattr(faiss, "StandardGpuResources", self._resources)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self._to_gpu)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu_multiple_py", self._to_gpus)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", self._to_cpu)
        monkeypatch.setattr(faiss, "knn_gpu", self._knn_gpu)
        monkeypatch.setattr(gpu_module, "free_gpu_memory", lambda: self.free)
        monkeypatch.setattr(gpu_module, "is_gpu_index", self.is_gpu)

    def is_gpu(self, index: faiss.Index) -> bool:
        return int(index.this) in self._addresses

    def _resources(self) -> object:
        self.resources.append(object())
        return self.resources[-1]

    def _to_gpu(self, res, device, index, options=None):
        return self._clone(index, (device,), bool(options and options.shard), [res])

    def _to_gpus(self, resources, index, options=None, gpus=None):
        return self._clone(index, tuple(gpus), bool(options and options.shard), resources)

    def _clone(self, index, devices, shard, resources):
        assert all(r in self.resources for r in resources), "resources not from the cache"
        cpu = faiss.downcast_index(index)
        if type(cpu) not in GPU_TYPES:
            raise RuntimeError(f"{type(cpu).__name__} not implemented on GPU")
        self.clones.append((type(cpu).__name__, devices, shard))
        clone = faiss.clone_index(index)
        address = int(clone.this)
        self._addresses.add(address)
        weakref.finalize(clone, self._addresses.discard, address)
        self.made.append(weakref.ref(clone))
        search = clone.search

        def gpu_search(x, k, **kwargs):
            ivf = faiss.try_extract_index_ivf(clone)
            if k > GPU_MAX_K or (ivf is not None and ivf.nprobe > 2048):
                raise RuntimeError("Error: 'k <= GPU_MAX_SELECTION_K' failed")
            if kwargs.get("params") is not None:
                raise RuntimeError("Error: IDSelector not supported for GPU indexes")
            return search(x, k, **kwargs)

        def gpu_range_search(*args, **kwargs):
            raise RuntimeError("Error: range_search not implemented for GPU indexes")

        clone.range_search = gpu_range_search

        clone.search = gpu_search
        return clone

    def _to_cpu(self, index):
        assert self.is_gpu(index)
        self.to_cpu_calls += 1
        return faiss.clone_index(index)

    def _knn_gpu(self, res, xq, xb, k, metric=faiss.METRIC_L2):
        assert res in self.resources
        self.knn += 1
        return faiss.knn(xq, xb, k, metric=metric)


@pytest.fixture(autouse=True)
def _fresh():
    clear_index_cache()
    clear_gpu_resources()
    yield
    clear_index_cache()
    clear_gpu_resources()


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    return lambda free=None: FakeGpu(monkeypatch, free)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = clustered(3_000)
    return make_latents(tmp_path / "lat", x), x


# -- 1. IVF training: the GPU clustering index lives through train() ------------------------
def test_train_keeps_the_gpu_clustering_index_alive(fake_gpu) -> None:
    """faiss keeps a raw pointer to ``clustering_index``: the GPU index behind it must stay
    alive through ``train`` (and be used there), then be released."""
    fake = fake_gpu()
    x = clustered(4_000, dim=16)
    index = faiss.index_factory(16, "IVF64,PQ4x4")
    seen: list[object] = []
    train = index.train

    def watched(data: np.ndarray) -> None:
        gc.collect()  # anything only faiss points to would go now
        clustering = fake.made[-1]()
        assert clustering is not None, "the GPU clustering index was freed before train()"
        train(data)
        seen.append(clustering.ntotal)  # k-means left its 64 centroids there
        del clustering

    index.train = watched
    GpuHelper().train(index, x)
    assert fake.clones == [("IndexFlat", (0,), False)]
    assert seen == [64] and index.is_trained
    assert faiss.try_extract_index_ivf(index).clustering_index is None
    gc.collect()
    assert fake.made[-1]() is None  # released once trained
    index.add(x)
    assert recall_at_k(index.search(x[:50], 1)[1], np.arange(50)[:, None]) > 0.5


def test_train_without_an_ivf_or_without_a_gpu_version_trains_on_the_cpu(
    fake_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_gpu()
    x = clustered(2_000, dim=16)
    sq = faiss.index_factory(16, "SQ8")
    GpuHelper().train(sq, x)
    assert sq.is_trained and fake.clones == []

    def no_gpu(*args):
        raise RuntimeError("not implemented on GPU")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", no_gpu)  # faiss' own CPU k-means then
    ivf = faiss.index_factory(16, "IVF32,Flat")
    with pytest.warns(UserWarning, match="k-means on the CPU"):
        GpuHelper().train(ivf, x)
    assert ivf.is_trained and faiss.try_extract_index_ivf(ivf).clustering_index is None


def test_a_failed_gpu_copy_is_said_unless_faiss_has_no_gpu_version(
    fake_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GPU version of the type: silently the CPU
        assert to_gpu(faiss.index_factory(8, "IVF16,PQ4x4fs")) is None
    index = faiss.index_factory(8, "IVF16,Flat")
    index.train(clustered(1_000, dim=8))

    def out_of_memory(*args):
        raise RuntimeError("Error in ... StandardGpuResources.cpp: cudaMalloc failed (2)")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", out_of_memory)
    with pytest.warns(UserWarning, match=r"no GPU copy \(Error in .*cudaMalloc"):
        assert to_gpu(index) is None


def test_gpu_build_trains_on_the_gpu_then_clones_the_trained_index(small, fake_gpu) -> None:
    fake = fake_gpu()
    path, _ = small
    built = build_index(path, kind="ivf", progress=False)
    assert built.info.built_on == "gpu" and built.on_gpu and built.info.recall >= 0.95
    assert [c[0] for c in fake.clones] == ["IndexFlat", "IndexIVFFlat"]  # k-means, then index
    assert fake.knn > 0 and fake.to_cpu_calls == 1  # ground truth on the GPU; saved as CPU
    assert len(fake.resources) == 1  # one StandardGpuResources for GPU 0, reused

    fake.clones.clear()  # IVF-PQ fast-scan + refine: no GPU version, but k-means on the GPU
    pq = build_index(path, kind="ivfpq", progress=False, save=False)
    assert pq.info.built_on == "cpu" and not pq.on_gpu
    assert fake.clones == [("IndexFlat", (0,), False)]
    assert len(fake.resources) == 1


def test_on_disk_build_trains_on_the_gpu_and_keeps_the_lists_on_disk(small, fake_gpu) -> None:
    from embedkit.index.ondisk import lists_file

    fake = fake_gpu()
    path, _ = small
    built = build_index(path, kind="ivf", on_disk=True, progress=False)
    assert fake.clones == [("IndexFlat", (0,), False)]  # k-means only: no GPU copy
    assert built.info.built_on == "cpu" and not built.on_gpu
    assert lists_file(built.index) is not None and built.info.recall >= 0.95
    assert fake.knn > 0  # the recall queries' ground truth on the GPU


# -- 2. sizing from GPU memory -----------------------------------------------------------
def test_placement_fits_one_gpu_then_shards_then_the_cpu() -> None:
    free = [GPU_RESERVE + 10 * GIB, GPU_RESERVE + 6 * GIB, GPU_RESERVE + 2 * GIB]
    usable = [usable_gpu_bytes(f) for f in free]  # 8, 4.8, 1.6 GiB
    assert gpu_placement(5 * GIB, free).devices == (0,)
    assert gpu_placement(5 * GIB, free[::-1]).devices == (2,)  # the roomiest GPU
    place = gpu_placement(9 * GIB, free)
    assert place.devices == (0, 1) and place.shard and "sharded over 2" in place.reason
    place = gpu_placement(10 * GIB, free)
    assert place.devices == () and "fits no GPU" in place.reason
    budget = gpu_memory_budget(free)
    assert budget == max(usable[0], 2 * usable[1], 3 * usable[2])
    assert gpu_placement(budget, free).devices and not gpu_placement(budget + 1, free).devices
    assert gpu_memory_budget([GPU_RESERVE // 2]) == 0 == gpu_memory_budget([])
    assert gpu_placement(1, None).devices == (0,)  # free memory unknown: GPU 0
    assert gpu_placement(9 * GIB, free, can_shard=False).devices == ()


def test_to_gpu_shards_or_stays_on_the_cpu_with_a_warning(fake_gpu) -> None:
    fake = fake_gpu([GPU_RESERVE + 10 * GIB, GPU_RESERVE + 6 * GIB])
    index = faiss.index_factory(8, "IVF16,Flat")
    index.train(clustered(1_000, dim=8))
    assert gpu_module.on_device(to_gpu(index, 5 * GIB))
    assert fake.clones[-1] == ("IndexIVFFlat", (0,), False)
    assert to_gpu(index, 9 * GIB) is not None
    assert fake.clones[-1] == ("IndexIVFFlat", (0, 1), True)
    with pytest.warns(UserWarning, match=r"fits no GPU .*stays on the CPU"):
        assert to_gpu(index, 20 * GIB) is None
    assert len(fake.clones) == 2 and len(fake.resources) == 2  # one per device, reused
    assert to_gpu(faiss.index_factory(8, "HNSW8"), 1) is None and len(fake.clones) == 2
    flat = faiss.IndexFlat(8)  # an empty Flat shard takes one add() only: never sharded
    with pytest.warns(UserWarning, match="fits no GPU whole"):
        assert to_gpu(flat, 9 * GIB) is None
    flat.add(clustered(10, dim=8))  # a filled one (a loaded index) is
    assert to_gpu(flat, 9 * GIB) is not None and fake.clones[-1] == ("IndexFlat", (0, 1), True)


def test_gpu_build_budget_comes_from_gpu_memory(tmp_path: Path, fake_gpu) -> None:
    path = make_latents(tmp_path / "lat", clustered(20_000, dim=16))
    fake = fake_gpu([GPU_RESERVE + (1 << 20)])  # room for ~0.8 MiB: IVF-Flat needs 1.4
    plan = plan_build(path, recall_sample=0)
    assert plan.gpu and plan.choice.kind == "ivfpq" and plan.budget is None
    assert plan_build(path, gpu=False, recall_sample=0).choice.kind == "hnsw"  # host RAM
    assert plan_build(path, memory_budget="1GB", recall_sample=0).choice.kind == "ivf"
    fake.free = [GPU_RESERVE + GIB]
    assert plan_build(path, recall_sample=0).choice.kind == "ivf"


def test_index_too_big_for_the_gpu_is_built_on_the_cpu(small, fake_gpu) -> None:
    fake = fake_gpu([GPU_RESERVE + 100_000])  # 80 kB usable; IVF-Flat of 3000x32: ~400 kB
    with pytest.warns(UserWarning, match="fits no GPU"):
        built = build_index(small[0], kind="ivf", progress=False, save=False)
    assert built.info.built_on == "cpu" and built.info.recall >= 0.95
    assert fake.clones == [("IndexFlat", (0,), False)]  # only the k-means ran on the GPU


# -- 3. a GPU copy only when a search pays for it -------------------------------------------
def test_gpu_pays_for_many_queries_over_a_large_index() -> None:
    assert gpu_pays(256, 1_000_000, 64) and gpu_pays(10_000, 10_000_000, 128)
    assert not gpu_pays(255, 10_000_000, 128)  # too few queries
    assert not gpu_pays(10_000, 999_999, 64)  # too small an index
    assert gpu_module.stays_on_cpu(1, 10, 4).startswith("1 query over 10x4")


def test_load_keeps_the_cpu_index_until_a_search_pays(small, fake_gpu, monkeypatch) -> None:
    path, x = small
    build_index(path, kind="ivf", progress=False, gpu=False)
    fake = fake_gpu()
    loaded = load_index(path)
    assert not loaded.on_gpu and loaded.gpu is None and fake.clones == []
    q = prepare_vectors(x[:300], "cosine", "q")
    cpu_found = loaded.search(q, 10)[1]
    assert loaded.searched_on == "cpu" and "300 queries" in loaded.search_note
    assert fake.clones == []  # 300 x 3000 rows: not worth a copy

    monkeypatch.setattr(gpu_module, "GPU_SEARCH_MIN_FLOATS", 1)  # now every index is large
    frame = neighbors(path, vectors=x[:300], k=10, index=loaded)
    assert frame.attrs["searched_on"] == "gpu" and frame.attrs["search_note"] is None
    assert fake.clones == [("IndexIVFFlat", (0,), False)]
    assert loaded.search(q[:1], 10) is not None and loaded.searched_on == "gpu"  # kept
    assert recall_at_k(loaded.search(q, 10)[1], cpu_found) >= 0.99  # tuned nprobe applied
    assert len(fake.clones) == 1 and len(fake.resources) == 1

    never = load_index(path, gpu=False)
    never.search(q, 10)
    assert (never.searched_on, never.search_note) == ("cpu", None) and len(fake.clones) == 1
    forced = load_index(path, gpu=True)  # the GPU copy now; the CPU index stays
    assert not forced.on_gpu and forced.gpu_index is not None and len(fake.clones) == 2
    forced.search(q[:1], 10)
    assert forced.searched_on == "gpu"
    with pytest.warns(UserWarning, match="k=2100 > 2048"):
        forced.search(q[:1], 2100)
    assert forced.searched_on == "cpu" and fake.to_cpu_calls == 0  # the CPU index itself


def test_cli_search_says_when_it_searched_on_the_gpu(
    small, fake_gpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from embedkit.cli import cli

    path, x = small
    build_index(path, kind="ivf", progress=False, gpu=False)
    fake_gpu()
    one = CliRunner().invoke(cli, ["search", str(path), "--id", "r1", "-k", "3"])
    assert one.exit_code == 0, one.output
    assert one.stderr == "" and len(one.stdout.splitlines()) == 4  # on the CPU: no word
    monkeypatch.setattr(gpu_module, "GPU_SEARCH_MIN_FLOATS", 1)
    np.save(tmp_path / "q.npy", x[:300])
    many = CliRunner().invoke(cli, ["search", str(path), "--vector", str(tmp_path / "q.npy")])
    assert many.exit_code == 0, many.output
    assert many.stderr == "searched on gpu\n" and len(many.stdout.splitlines()) == 3001


def test_cli_search_is_silent_without_a_gpu(small, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedkit.cli import cli

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    build_index(small[0], kind="ivf", progress=False)
    result = CliRunner().invoke(cli, ["search", str(small[0]), "--id", "r1", "-k", "3"])
    assert result.exit_code == 0 and result.stderr == ""


# -- 4. faiss' GPU limits ------------------------------------------------------------------
def test_gpu_limit_names_k_and_nprobe() -> None:
    assert gpu_limit(2048, {"nprobe": 2048}) is None
    assert "k=2049 > 2048" in gpu_limit(2049, {})
    assert "nprobe=4096 > 2048" in gpu_limit(10, {"nprobe": 4096.0})


def test_searches_past_the_gpu_limits_run_on_a_cpu_copy(small, fake_gpu) -> None:
    path, x = small
    exact = neighbors(path, vectors=x[:2], k=2500, index="exact")
    fake = fake_gpu()
    built = build_index(path, kind="ivf", progress=False)
    assert built.on_gpu
    with pytest.raises(RuntimeError, match="GPU_MAX_SELECTION_K"):  # what faiss would do
        built.index.search(prepare_vectors(x[:2], "cosine", "q"), 2500)
    nlist = faiss.try_extract_index_ivf(faiss.index_gpu_to_cpu(built.index)).nlist
    with pytest.warns(UserWarning, match=r"CPU copy of the index: k=2500 > 2048"):
        frame = neighbors(path, vectors=x[:2], k=2500, index=built, nprobe=nlist)
    assert len(frame) == 5000 and frame.attrs["searched_on"] == "cpu"
    assert np.allclose(frame["score"], exact["score"], atol=1e-5)  # every list probed
    copies = fake.to_cpu_calls
    with pytest.warns(UserWarning, match=r"nprobe=4096 > 2048"):
        frame = neighbors(path, vectors=x[:2], k=5, index=built, nprobe=4096)
    assert len(frame) == 10 and frame.attrs["searched_on"] == "cpu"
    assert fake.to_cpu_calls == copies  # the CPU copy is made once and kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neighbors(path, vectors=x[:2], k=5, index=built)  # within the limits: the GPU
    assert built.searched_on == "gpu"


def test_selector_and_range_searches_run_on_the_cpu(small, fake_gpu, monkeypatch) -> None:
    """faiss' GPU indexes take no IDSelector and have no range search: a filtered or
    radius search of an index built on a GPU runs on its CPU copy, and says why."""
    import embedkit.index.filtered as filtered
    from embedkit.store import open_latents

    monkeypatch.setattr(filtered, "EXACT_SUBSET_ROWS", 100)
    monkeypatch.setattr(filtered, "visited_rows", lambda index, params: 0.0)
    path, x = small
    fake = fake_gpu()
    built = build_index(path, kind="ivf", progress=False)
    assert built.on_gpu
    copies = fake.to_cpu_calls  # the save's
    view = open_latents(path).filter(group=[1, 2, 3])
    frame = neighbors(view, vectors=x[:20], k=5, index=built)
    assert frame.attrs["search"] == "index+selector" and frame.attrs["searched_on"] == "cpu"
    assert "take no IDSelector" in frame.attrs["search_note"]
    assert set(frame["group"]) <= {1, 2, 3} and len(frame) == 100
    assert fake.to_cpu_calls == copies + 1
    ranged = neighbors(path, vectors=x[:2], radius=0.9, index=built)
    assert ranged.attrs["searched_on"] == "cpu" and "no range search" in ranged.attrs["search_note"]
    assert fake.to_cpu_calls == copies + 1  # the CPU copy is made once and kept
    loaded = load_index(path, gpu=True)  # a CPU index with a GPU copy: the CPU index itself
    frame = neighbors(view, vectors=x[:20], k=5, index=loaded)
    assert frame.attrs["searched_on"] == "cpu" and set(frame["group"]) <= {1, 2, 3}


def test_a_tuned_nprobe_past_the_gpu_limit_keeps_the_index_on_the_cpu(small, fake_gpu) -> None:
    path, x = small
    build_index(path, kind="ivf", progress=False, gpu=False)
    loaded = load_index(path, gpu=False)
    loaded.info.params["nprobe"] = 4096  # as a CPU build over a large nlist may tune it
    fake = fake_gpu()
    loaded.gpu = True
    with pytest.warns(UserWarning, match="nprobe=4096 > 2048"):
        loaded.search(prepare_vectors(x[:3], "cosine", "q"), 5)
    assert loaded.searched_on == "cpu" and fake.clones == []


def test_resources_are_made_once_per_device(fake_gpu) -> None:
    fake = fake_gpu([GIB, GIB])
    assert gpu_resources(0) is gpu_resources(0) is not gpu_resources(1)
    assert len(fake.resources) == 2
    clear_gpu_resources()
    gpu_resources(0)
    assert len(fake.resources) == 3


# -- on a real GPU --------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
def test_real_gpu_kmeans_for_ivf_pq_and_resources() -> None:
    x = clustered(20_000, dim=32)
    index = faiss.index_factory(32, "IVF256,PQ8")
    GpuHelper().train(index, x)
    gc.collect()
    assert index.is_trained and faiss.try_extract_index_ivf(index).clustering_index is None
    index.add(x)
    assert index.ntotal == 20_000
    assert gpu_resources(0) is gpu_resources(0)
    free = gpu_module.free_gpu_memory()
    assert free and all(f > 0 for f in free)
    assert gpu_placement(1 << 20, free).devices


@pytest.mark.gpu
@needs_gpu
def test_real_gpu_limits_and_lazy_copy(small, monkeypatch) -> None:
    path, x = small
    built = build_index(path, kind="ivf", progress=False, gpu=True)
    assert built.on_gpu
    nlist = faiss.try_extract_index_ivf(faiss.index_gpu_to_cpu(built.index)).nlist
    with pytest.warns(UserWarning, match="k=2500"):
        assert len(neighbors(path, vectors=x[:2], k=2500, index=built, nprobe=nlist)) == 5000
    with pytest.warns(UserWarning, match="nprobe=4096"):
        assert len(neighbors(path, vectors=x[:2], k=5, index=built, nprobe=4096)) == 10
    loaded = load_index(path)
    assert not loaded.on_gpu
    q = prepare_vectors(x[:300], "cosine", "q")
    cpu_found = loaded.search(q, 10)[1]
    monkeypatch.setattr(gpu_module, "GPU_SEARCH_MIN_FLOATS", 1)
    gpu_found = loaded.search(q, 10)[1]
    assert loaded.searched_on == "gpu"
    assert recall_at_k(gpu_found, cpu_found) >= 0.99


def test_tuning_reaches_the_ivf_inside_shards_and_gpu_wrappers() -> None:
    """``ladders`` finds nprobe through shards (a sharded GPU build) as through plain IVF;
    ``try_extract_index_ivf`` alone would see none and leave the index untuned."""
    from embedkit.index.tune import is_gpu_index, ivf_of, ladders

    quantizer = faiss.IndexFlatL2(8)
    ivf = faiss.IndexIVFFlat(quantizer, 8, 16)
    shards = faiss.IndexShards(8)
    shards.add_shard(ivf)
    assert faiss.try_extract_index_ivf(shards) is None
    assert ivf_of(shards).nlist == 16
    assert ladders(shards, 10)[0][0] == "nprobe" and ladders(shards, 10)[0][1][-1] == 16
    assert not is_gpu_index(shards)  # CPU shards keep the CPU parameter space
    assert ivf_of(faiss.IndexFlatL2(8)) is None


def test_exact_search_copies_to_the_gpu_only_when_it_pays(small, fake_gpu, monkeypatch) -> None:
    """``neighbors`` without a saved index builds its exact Flat on the CPU; one query
    stays there, a large batch over a large index moves to a GPU copy."""
    path, x = small
    fake = fake_gpu()
    one = neighbors(path, vectors=x[:1], k=5, index="exact")
    assert one.attrs["searched_on"] == "cpu" and fake.clones == []
    monkeypatch.setattr(gpu_module, "GPU_SEARCH_MIN_FLOATS", 1)
    many = neighbors(path, vectors=x[:300], k=5, index="exact")
    assert many.attrs["searched_on"] == "gpu" and [c[0] for c in fake.clones] == ["IndexFlat"]
    assert (many[many["query"] == 0]["id"].to_numpy() == one["id"].to_numpy()).all()
