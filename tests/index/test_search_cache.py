"""What neighbors() keeps between calls (opened datasets, fingerprints, index.json, indexes,
id -> row tables, vectors read back from the index) is never served once the data changed,
and the repeated call reads no Parquet footer."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.errors import InputError
from embedkit.index import build_index, load_index, search_cache
from embedkit.index.metric import prepare_vectors
from embedkit.index.results import frame_of, results_frame
from embedkit.index.search import RACY_NS, clear_index_cache, neighbors
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.writer import write_latents

N, DIM = 400, 16


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


def write(path: Path, x: np.ndarray, start: int = 0) -> Path:
    ids = [f"r{i}" for i in range(start, start + len(x))]
    labels = {"label": [f"L{i % 3}" for i in range(start, start + len(x))]}
    return write_latents(path, ids, x, BackboneInfo("test-encoder", DIM), labels)


@pytest.fixture
def lat(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)
    return write(tmp_path / "lat", x), x


def shuffled_part(part: Path, seed: int) -> tuple[bytes, np.ndarray]:
    """The bytes of ``part`` with its rows' vectors permuted (same ids, schema, metadata,
    codecs and byte size: the vectors are stored uncompressed with the same min/max), and
    the permutation: new vector of row i = old vector of row perm[i]."""
    table = pq.read_table(part)
    old = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    perm = np.random.default_rng(seed).permutation(len(old))
    field = table.schema.field("embedding")
    column = pa.array(list(old[perm]), type=field.type)
    table = table.set_column(table.schema.get_field_index("embedding"), field, column)
    group = pq.ParquetFile(part).metadata.row_group(0)
    chunks = [group.column(i) for i in range(group.num_columns)]
    codecs = {c.path_in_schema: c.compression.replace("UNCOMPRESSED", "NONE") for c in chunks}
    tmp = part.with_name(".shuffled.tmp")
    dictionary = [c.path_in_schema for c in chunks if "RLE_DICTIONARY" in c.encodings]
    pq.write_table(table, tmp, compression=codecs, use_dictionary=dictionary)
    data = tmp.read_bytes()
    tmp.unlink()
    assert len(data) == part.stat().st_size
    return data, perm


def rewrite_in_place(part: Path, data: bytes) -> None:
    """Overwrite ``part`` with ``data`` in place (same inode) and set its mtime back: the
    fingerprint (name, size, rows, mtime, inode) cannot tell; only the ctime moves."""
    st = part.stat()
    time.sleep(0.03)  # past the coarse clock tick that stamped the first write
    with part.open("r+b") as f:
        f.write(data)
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert part.stat().st_ino == st.st_ino and part.stat().st_mtime_ns == st.st_mtime_ns


def top1(path, **kwargs) -> list[str]:
    return neighbors(path, k=1, **kwargs)["id"].tolist()


def settle() -> None:
    """Wait until the files just written are old enough for neighbors() to keep what it
    learns about them (a file changed within RACY_NS is never trusted)."""
    time.sleep(RACY_NS / 1e9 + 0.02)


# -- stale data is never served -------------------------------------------------------------
def test_exact_search_sees_an_appended_part(lat) -> None:
    path, _ = lat
    q = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
    new = [f"r{N + i}" for i in range(3)]
    settle()
    assert not set(new) & set(top1(path, vectors=q))  # cached now
    write(path, q, start=N)
    assert top1(path, vectors=q) == new
    assert neighbors(path, ids=new[1], k=2, exclude_self=False)["id"].iloc[0] == new[1]


def test_exact_search_sees_a_removed_part(lat) -> None:
    path, _ = lat
    q = np.random.default_rng(2).normal(size=(5, DIM)).astype(np.float32)
    new = [f"r{N + i}" for i in range(5)]
    write(path, q, start=N)  # a second part
    settle()
    assert top1(path, vectors=q) == new
    max(path.glob("part-*.parquet")).unlink()
    assert not set(new) & set(top1(path, vectors=q))
    with pytest.raises(InputError, match="not found"):
        neighbors(path, ids=new[:1])


def test_exact_search_sees_a_same_size_rewrite_with_the_mtime_set_back(lat) -> None:
    path, x = lat
    part = open_latents(path).files[0]
    fingerprint = open_latents(path).fingerprint()
    settle()
    assert top1(path, ids=["r0"], exclude_self=False) == ["r0"]  # cached now
    data, perm = shuffled_part(part, seed=3)
    rewrite_in_place(part, data)
    assert open_latents(path).fingerprint() == fingerprint  # the fingerprint cannot tell
    # row 0 now holds the old vector of row perm[0]: the exact index is rebuilt, and the
    # query is that new vector
    got = neighbors(path, vectors=x[perm[0]], k=1)
    assert got["id"].tolist() == ["r0"]
    assert got["label"].tolist() == ["L0"]
    assert top1(path, ids=[f"r{perm[0]}"], exclude_self=False) == [f"r{perm[0]}"]


def test_a_rewrite_within_the_clock_tick_is_never_served_stale(
    lat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem whose clock did not tick between the write, the call and an
    in-place rewrite, the part's stat is unchanged: nothing learnt right after a write may
    be kept."""
    path, x = lat
    import embedkit.store.format as store_format

    real, first = store_format.file_stamp, {}

    def coarse(file: Path) -> tuple:  # times frozen at the first look: the clock never ticks
        stat = real(file)
        first.setdefault(stat[0], stat[2:4])
        return (stat[0], stat[1], *first[stat[0]], *stat[4:])

    monkeypatch.setattr(store_format, "file_stamp", coarse)  # part_stamps looks through it
    monkeypatch.setattr(search_cache, "file_stamp", coarse)
    part = open_latents(path).files[0]
    assert top1(path, ids=["r0"], exclude_self=False) == ["r0"]
    data, perm = shuffled_part(part, seed=6)
    with part.open("r+b") as f:
        f.write(data)
    assert coarse(part)[1:4] == (len(data), *first[str(part)])  # the stat cannot tell
    assert neighbors(path, vectors=x[perm[0]], k=1)["id"].tolist() == ["r0"]


def test_a_rebuilt_saved_index_is_picked_up(lat) -> None:
    path, _ = lat
    build_index(path, kind="flat", progress=False)
    settle()
    assert "score" in neighbors(path, ids=["r1"], k=3).columns
    build_index(path, kind="flat", metric="l2", progress=False)  # index.json rewritten
    assert "distance" in neighbors(path, ids=["r1"], k=3).columns


def test_a_dataset_object_sees_its_parts_change(lat) -> None:
    path, _ = lat
    ds = open_latents(path)
    build_index(ds, kind="flat", progress=False)
    settle()
    assert len(neighbors(ds, ids=["r0"], k=3)) == 3
    data, _ = shuffled_part(ds.files[0], seed=4)
    tmp = ds.files[0].with_name(".new")
    tmp.write_bytes(data)
    os.replace(tmp, ds.files[0])  # same name and size, a new inode
    with pytest.raises(InputError, match="stale"):
        neighbors(ds, ids=["r0"], k=3)
    with pytest.raises(InputError, match="stale"):
        neighbors(path, ids=["r0"], k=3)


def test_a_given_index_of_older_latents_queries_the_current_vectors(lat) -> None:
    path, _ = lat
    built = build_index(path, kind="flat", progress=False, save=False)
    part = open_latents(path).files[0]
    data, perm = shuffled_part(part, seed=5)
    tmp = part.with_name(".new")
    tmp.write_bytes(data)
    os.replace(tmp, part)
    # r0's vector is now the old vector of row perm[0], which the old index holds there;
    # reading r0's vector back from that index would find r0 itself
    assert top1(path, ids=["r0"], exclude_self=False, index=built) == [f"r{perm[0]}"]


# -- vectors read back from the index -----------------------------------------------------
KEEP = ["Flat", "IVF8,Flat", "HNSW16", "IVF8,PQ4x4fs,RFlat"]
LOSSY = ["IVF8,PQ4x4", "IVF8,SQ8", "IVF8,PQ4x4fs,Refine(SQfp16)", "HNSW16,SQ8"]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_stored_vectors_are_the_prepared_latents_or_none(lat, metric: str) -> None:
    path, _ = lat
    rows = np.array([5, 0, 399, 5])
    for kind in KEEP + LOSSY:
        built = build_index(
            path, kind=kind, metric=metric, progress=False, save=False, recall_sample=0
        )
        ids = built.ids[rows].tolist()
        back = built.stored_vectors(built.rows_of(ids))
        if kind in LOSSY:
            assert back is None, kind
            continue
        expected = prepare_vectors(open_latents(path).vectors_of(ids), metric, "q")
        assert back is not None and np.array_equal(back, expected), kind


def test_stored_vectors_of_a_memory_mapped_ivf_index(lat) -> None:
    path, x = lat
    build_index(path, kind="IVF8,Flat", progress=False, recall_sample=0)
    loaded = load_index(path, mmap=True)
    back = loaded.stored_vectors(loaded.rows_of(["r3", "r7"]))
    assert np.array_equal(back, prepare_vectors(x[[3, 7]], "cosine", "q"))
    by_id = neighbors(path, ids=["r3", "r7"], k=4, index=loaded)
    exact = neighbors(path, ids=["r3", "r7"], k=4, index="exact")
    assert by_id["id"].tolist() == exact["id"].tolist()


def test_by_id_through_a_lossy_index_uses_the_parquet_vectors(lat) -> None:
    path, _ = lat
    built = build_index(path, kind="IVF8,SQ8", progress=False, save=False, recall_sample=0)
    frame = neighbors(path, ids=["r9"], k=3, exclude_self=False, index=built, nprobe=8)
    assert frame["id"].iloc[0] == "r9"


def test_rows_of_maps_a_repeated_id_to_its_first_row(lat) -> None:
    path, _ = lat
    built = build_index(path, kind="flat", progress=False, save=False)
    twice = dataclasses.replace(built, ids=np.array(["a", "b", "a"], dtype=object))
    assert twice.rows_of(["a", "b", "z", "a"]).tolist() == [0, 1, -1, 0]
    assert built.rows_of(["r2", "nope"]).tolist() == [built.ids.tolist().index("r2"), -1]


# -- what a repeated call costs --------------------------------------------------------------
def test_a_repeated_call_reads_no_parquet_footer(lat, monkeypatch: pytest.MonkeyPatch) -> None:
    path, x = lat
    build_index(path, kind="flat", progress=False)
    settle()
    neighbors(path, ids=["r0"], k=3)
    neighbors(path, vectors=x[0], k=3)
    reads: list[str] = []

    def counted(name: str):
        real = getattr(pq, name)
        return lambda *args, **kwargs: reads.append(name) or real(*args, **kwargs)

    for name in ("ParquetFile", "read_schema", "read_metadata", "read_table"):
        monkeypatch.setattr(pq, name, counted(name))
    for _ in range(3):
        neighbors(path, ids=["r0"], k=3)
        neighbors(path, vectors=x[0], k=3)
    assert reads == []
    write(path, x[:2] + 1, start=N)  # a new part: opened and fingerprinted again
    with pytest.raises(InputError, match="stale"):
        neighbors(path, vectors=x[0], k=3)
    assert reads


# -- the result frame ------------------------------------------------------------------------
def test_frame_of_equals_the_pandas_constructor() -> None:
    strings = pd.array(["a", None, "c"], dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    cases = [
        {"q": np.arange(3), "s": strings, "f": np.ones(3, np.float32), "b": np.zeros(3, bool)},
        {"q": np.array(["x", 1, None], dtype=object), "s": strings},  # not block-ready
        {"t": pd.Series(pd.to_datetime(["2024-01-01"] * 3)), "u": np.arange(3, dtype=np.uint8)},
    ]
    for data in cases:
        pd.testing.assert_frame_equal(frame_of(data), pd.DataFrame(data))
    one, two = frame_of(cases[0]), frame_of(cases[0])
    one.columns.name = "renamed"
    assert two.columns.name is None  # the cached column labels are not shared


def test_results_frame_with_missing_neighbours(lat) -> None:
    path, _ = lat
    built = build_index(path, kind="flat", progress=False, save=False)
    found = np.array([[3, -1, 5], [7, 8, -1]])
    dist = np.arange(6, dtype=np.float32).reshape(2, 3)
    frame = results_frame(built, ["qa", "qb"], found, dist, found >= 0, ["label"])
    assert frame["query"].tolist() == ["qa", "qa", "qb", "qb"]
    assert frame["rank"].tolist() == [1, 3, 1, 2]
    assert frame["id"].tolist() == built.ids[[3, 5, 7, 8]].tolist()
    assert frame["score"].tolist() == [0.0, 2.0, 3.0, 4.0]
    assert str(frame["id"].dtype) == str(frame["label"].dtype) == str(pd.Series(["a"]).dtype)


def test_exclude_self_when_a_duplicate_ranks_first(tmp_path: Path) -> None:
    x = np.random.default_rng(7).normal(size=(50, DIM)).astype(np.float32)
    x[1] = x[0]  # r0 and r1 tie: either may come first
    path = write(tmp_path / "dup", x)
    for query, twin in (("r0", "r1"), ("r1", "r0")):
        frame = neighbors(path, ids=[query, "r5"], k=3)
        got = frame[frame["query"] == query]
        assert got["id"].iloc[0] == twin and query not in got["id"].tolist()
        assert got["rank"].tolist() == [1, 2, 3] and len(frame) == 6
    assert neighbors(path, ids="r0", k=60)["id"].nunique() == 49  # k beyond the rows
