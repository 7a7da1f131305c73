"""A sharded index build (embedkit.index.sharded, shard_add, shard_merge): the rows split
into contiguous shards, each filled in an empty copy of the trained index, merged in
order into the index one machine builds: the same ids, lists and results, the same
recall. Shards run in-process here and as Ray tasks on a local Ray; the simulated
multi-node cluster is in tests/pipeline/test_ray_multinode.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedkit.errors import InputError
from embedkit.index import build_index, load_index, neighbors
from embedkit.index.plan import Sharding, plan_build
from embedkit.index.search import clear_index_cache
from embedkit.index.shard_add import add_shard
from embedkit.index.shard_merge import from_bytes, merge_shard, shardable, to_bytes
from embedkit.index.sharded import plan_shards, shard_count
from embedkit.plugins.info import BackboneInfo
from embedkit.store.vectors import PartStat
from embedkit.store.writer import write_latents

DIM = 16
PARTS, ROWS = 3, 9_000


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, DIM))
    return (centers[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, DIM))).astype("f4")


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """27,000 clustered rows in three parts."""
    path = tmp_path_factory.mktemp("sharded") / "lat"
    x = clustered(PARTS * ROWS, 0)
    for p in range(PARTS):
        rows = slice(p * ROWS, (p + 1) * ROWS)
        ids = [f"p{p}-{i}" for i in range(ROWS)]
        write_latents(path, ids, x[rows], BackboneInfo("test-encoder", DIM))
    return path


@pytest.fixture(scope="module")
def local_ray() -> Iterator[object]:
    """A local Ray with two CPUs for this module (shut down after it)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'embedkit[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    yield ray
    if started:
        ray.shutdown()


def stat(name: str, rows: int) -> PartStat:
    return PartStat(Path(name), 100, rows, 0, 0)


def test_shards_cover_every_row_once_balanced_with_the_queries_held_out():
    parts = [stat("a", 10), stat("b", 3), stat("c", 17)]
    queries = np.array([0, 9, 10, 12, 29])
    tasks = plan_shards(parts, queries, 4, "cosine", DIM)

    covered = [(p.path, row) for t in tasks for p in t.pieces for row in range(p.first, p.stop)]
    expected = [(s, r) for s, n in (("a", 10), ("b", 3), ("c", 17)) for r in range(n)]
    assert covered == expected  # in stream order, each row once
    assert [t.rows for t in tasks] == [8, 7, 7, 8]
    assert [t.start for t in tasks] == [0, 8, 15, 22]
    assert [t.held.tolist() for t in tasks] == [[0], [1, 2, 4], [], [7]]
    # row numbers in the merged index: the rows of earlier shards, less their queries
    assert [t.first_label for t in tasks] == [0, 7, 11, 18]
    assert tasks[1].pieces[0].first == 8 and tasks[1].pieces[1].path == "b"


def test_shard_count():
    assert shard_count(None, 1_000_000, 4) == 8  # two per CPU
    assert shard_count(None, 120_000, 16) == 2  # no shard under 50,000 rows
    assert shard_count(None, 10, 16) == 1
    assert shard_count(7, 3, 16) == 3  # never more shards than rows
    with pytest.raises(InputError, match="shards must be >= 1"):
        shard_count(0, 100, 2)


@pytest.mark.parametrize(
    "factory", ["IVF64,Flat", "IVF64,SQ8,RFlat", "PCA8,IVF64,SQ8", "IVF64,PQ8x4fs", "Flat"]
)
def test_merged_shards_are_the_index_one_machine_builds(factory: str):
    x = clustered(12_000, 1)
    trained = faiss.index_factory(DIM, factory)
    trained.train(x)
    whole = from_bytes(to_bytes(trained))
    whole.add(x)
    merged = from_bytes(to_bytes(trained))
    for lo, hi in [(0, 5_000), (5_000, 5_001), (5_001, 12_000)]:
        shard = from_bytes(to_bytes(trained))
        shard.add(x[lo:hi])
        merge_shard(merged, shard)

    assert merged.ntotal == whole.ntotal == len(x)
    for index in (merged, whole):
        if (ivf := faiss.try_extract_index_ivf(index)) is not None:
            ivf.nprobe = 8
    queries = clustered(50, 2)
    assert np.array_equal(merged.search(queries, 10)[1], whole.search(queries, 10)[1])
    if "fs" not in factory:  # fast-scan packs codes in blocks of 32 rows: padding differs
        assert np.array_equal(to_bytes(merged), to_bytes(whole))  # bit for bit


def test_only_mergeable_kinds_are_sharded(latents: Path):
    assert not shardable(faiss.index_factory(DIM, "HNSW16"))
    with pytest.raises(InputError, match=r"HNSW32 cannot be built in shards.*--kind ivf"):
        build_index(latents, kind="hnsw", engine="ray", save=False, progress=False)
    with pytest.raises(InputError, match="need engine='ray'"):
        build_index(latents, kind="ivf", shards=2, save=False, progress=False)
    with pytest.raises(InputError, match="engine must be local or ray"):
        build_index(latents, kind="ivf", engine="spark", save=False, progress=False)
    from embedkit.store import open_latents

    view = open_latents(latents).filter(id="p0-1")
    with pytest.raises(InputError, match="whole dataset"):
        build_index(view, kind="ivf", engine="ray", save=False, progress=False)
    # auto never picks HNSW for a sharded build
    plan = plan_build(latents, kind="auto", recall_sample=0, sharding=Sharding(2))
    assert plan.choice.kind != "hnsw" and "HNSW" not in plan.choice.factory


def test_shards_run_in_process_give_the_local_build(latents: Path):
    """The workers' code without Ray: the shards merged equal the local build's index,
    ids and exact neighbours of the held-out queries."""
    local = build_index(latents, kind="ivf", save=False, progress=False)
    plan = plan_build(latents, kind="ivf", sharding=Sharding(4))
    trained = plan.index
    trained.train(_rows(latents, plan.train_pos))
    queries = _rows(latents, plan.query_pos)
    merged = from_bytes(to_bytes(trained))
    ids = []
    for task in plan_shards(plan.parts, plan.query_pos, 4, "cosine", DIM):
        result = add_shard(task, to_bytes(trained), queries, 20, batch_rows=1_000)
        merge_shard(merged, from_bytes(result.index))
        ids.append(result.ids)
        # the queries' neighbours found in the shard are rows of the shard
        first, rows = task.first_label, task.rows - len(task.held)
        assert ((result.labels >= first) & (result.labels < first + rows)).all()
    n_rest = plan.n - len(plan.query_pos)
    assert merged.ntotal == n_rest
    assert np.array_equal(np.concatenate(ids), local.ids[:n_rest])


def _rows(latents: Path, positions: np.ndarray) -> np.ndarray:
    from embedkit.index.select import collect_rows
    from embedkit.store import open_latents

    ((vectors, _),) = collect_rows(open_latents(latents), "cosine", [positions], False, 4096)
    return vectors


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ray_build_equals_the_local_build(latents: Path, local_ray, kind: str):
    clear_index_cache()
    local = build_index(latents, kind=kind, save=False, progress=False)
    sharded = build_index(latents, kind=kind, engine="ray", shards=5, progress=False)

    assert np.array_equal(sharded.ids, local.ids)
    assert sharded.info.factory == local.info.factory
    assert abs(sharded.info.recall - local.info.recall) <= 0.01
    record = sharded.info.sharding
    assert record["engine"] == "ray" and record["shards"] == 5 and record["nodes"] == 1
    assert sum(s["rows"] for s in record["per_shard"]) == PARTS * ROWS - 1000
    queries = clustered(100, 3)
    same = (local.index.search(queries, 10)[1] == sharded.index.search(queries, 10)[1]).mean()
    # IVF-Flat: bit for bit; 4-bit fast-scan PQ may order tied codes differently
    assert same == 1.0 if kind == "ivf" else same >= 0.98

    # saved like any index: loaded memory-mapped, searched by neighbors
    mapped = load_index(latents, mmap=True)
    assert mapped.info.sharding == record
    hits = neighbors(latents, ids=["p1-5", "p2-7"], k=5, index=mapped)
    direct = neighbors(latents, ids=["p1-5", "p2-7"], k=5, index=sharded)
    assert hits["id"].tolist() == direct["id"].tolist()


def test_ray_build_merges_shards_into_lists_on_disk(latents: Path, local_ray):
    from embedkit.index.ondisk import lists_file

    clear_index_cache()
    local = build_index(latents, kind="ivf", save=False, progress=False)
    sharded = build_index(latents, kind="ivf", engine="ray", shards=3, on_disk=True,
                          progress=False)  # fmt: skip
    assert lists_file(sharded.index) is not None
    assert np.array_equal(sharded.ids, local.ids)
    queries = clustered(100, 4)
    faiss.normalize_L2(queries)
    assert np.array_equal(local.search(queries, 10)[1], sharded.search(queries, 10)[1])
    loaded = load_index(latents)
    assert np.array_equal(local.search(queries, 10)[1], loaded.search(queries, 10)[1])


def test_a_part_changed_since_the_plan_is_refused_by_its_shard(latents: Path):
    plan = plan_build(latents, kind="ivf", recall_sample=0, sharding=Sharding(2))
    plan.index.train(clustered(5_000, 9))
    task = plan_shards(plan.parts, plan.query_pos, 2, "cosine", DIM)[0]
    piece = task.pieces[0]
    moved = dataclasses.replace(task, pieces=(dataclasses.replace(piece, size=piece.size + 1),))
    with pytest.raises(InputError, match=r"changed while the index was built; run `embedkit index"):
        add_shard(moved, to_bytes(plan.index), np.zeros((0, DIM), "f4"), 10)
