"""Reading latent datasets: round trips, metadata, zero-copy reads, views and damaged folders."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import embedkit
from embedkit.errors import InputError
from embedkit.plugins.info import BackboneInfo
from embedkit.store.dataset import LatentBatch, LatentDataset, open_latents
from embedkit.store.format import META_KEY, LatentMeta, read_meta, vectors_from_column
from embedkit.store.writer import LatentWriter, write_latents

DIM = 8
IDS = ["a", "b", "c", "d", "e", "f"]
COLUMNS = {
    "n": [1, None, 3, 4, 5, 6],
    "x": [0.5, 1.5, None, 3.5, 4.5, 5.5],
    "color": ["red", "blue", None, "red", "green", "blue"],
    "flag": [True, False, None, True, False, True],
}


def toy(name: str = "toy", dim: int = DIM, **config) -> BackboneInfo:
    return BackboneInfo(name=name, dim=dim, config=config)


def vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Six rows with int/float/str/bool carried columns, each holding a None."""
    vecs = vectors(len(IDS))
    path = write_latents(
        tmp_path / "lat",
        IDS,
        vecs,
        toy(size=224),
        columns=COLUMNS,
        sources=[f"img/{i}.png" for i in IDS],
    )
    return path, vecs


@pytest.fixture
def multipart(tmp_path: Path) -> tuple[Path, list[str], np.ndarray]:
    """50 rows over 5 parts of 10 rows, written by 5 appends with distinct ids."""
    path = tmp_path / "multi"
    all_ids: list[str] = []
    chunks = []
    for k in range(5):
        ids = [f"p{k}-{j:02d}" for j in range(10)]
        vecs = vectors(10, seed=k + 1)
        write_latents(path, ids, vecs, toy(), columns={"k": [k] * 10, "j": list(range(10))})
        all_ids += ids
        chunks.append(vecs)
    return path, all_ids, np.concatenate(chunks)


# -- round trip ---------------------------------------------------------------


def test_round_trip_values(sample):
    path, vecs = sample
    ds = open_latents(path)
    assert isinstance(ds, LatentDataset)
    assert len(ds) == 6
    assert ds.dim == DIM
    assert ds.columns == ["id", "source", "n", "x", "color", "flag"]
    assert ds.ids().tolist() == IDS
    table = ds.to_table()
    assert table.column("source").to_pylist() == [f"img/{i}.png" for i in IDS]
    for name, values in COLUMNS.items():
        assert table.column(name).to_pylist() == values, name
    x = ds.to_numpy()
    assert x.dtype == np.float32
    assert x.shape == (6, DIM)
    np.testing.assert_array_equal(x, vecs)


def test_carried_column_types_keep_nulls(sample):
    ds = open_latents(sample[0])
    schema = ds.schema
    assert schema.field("id").type == pa.string()
    assert schema.field("source").type == pa.string()
    assert schema.field("n").type == pa.int64()  # None must not turn an int column into floats
    assert schema.field("x").type == pa.float64()
    assert pa.types.is_string(schema.field("color").type) or pa.types.is_large_string(
        schema.field("color").type
    )
    assert schema.field("flag").type == pa.bool_()
    table = ds.to_table()
    assert [table.column(c).null_count for c in ("n", "x", "color", "flag")] == [1, 1, 1, 1]


def test_dataframe_columns_nan_become_nulls(tmp_path):
    frame = pd.DataFrame(
        {"label": ["cat", None, "dog"], "score": [0.25, np.nan, 1.0], "n": [1, 2, 3]},
        index=[10, 20, 30],  # a non-default index must not matter
    )
    write_latents(tmp_path / "lat", ["a", "b", "c"], vectors(3), toy(), columns=frame)
    table = open_latents(tmp_path / "lat").to_table()
    assert table.column("label").to_pylist() == ["cat", None, "dog"]
    assert table.column("score").to_pylist() == [0.25, None, 1.0]
    assert table.column("n").to_pylist() == [1, 2, 3]


def test_metadata_read_back(sample):
    ds = open_latents(sample[0])
    meta = ds.meta
    assert isinstance(meta, LatentMeta)
    assert ds.backbone == toy(size=224)
    assert ds.backbone.config == {"size": 224}
    assert meta.dim == DIM
    assert meta.normalized is False and ds.normalized is False
    assert meta.dtype == "float32"
    assert meta.embedkit_version == embedkit.__version__
    assert meta.created
    created = datetime.fromisoformat(meta.created)
    assert created.tzinfo is not None
    assert read_meta(ds.files[0]) == meta


def test_meta_bytes_round_trip():
    meta = LatentMeta(toy(kind="x", layers=[1, 2]), DIM, True, "float16", "9.9", "2024-01-01")
    assert LatentMeta.from_bytes(meta.to_bytes()) == meta
    # Older metadata without the optional keys reads with defaults.
    bare = b'{"backbone": {"name": "old", "dim": 4}, "dim": 4}'
    old = LatentMeta.from_bytes(bare)
    assert (old.backbone.name, old.dim, old.normalized, old.dtype) == ("old", 4, False, "float32")


def test_normalized_and_dtype_stored(tmp_path):
    vecs = vectors(4)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    write_latents(tmp_path / "lat", list("abcd"), vecs, toy(), normalized=True, dtype="float16")
    ds = open_latents(tmp_path / "lat")
    assert ds.normalized is True
    assert ds.meta.dtype == "float16"


def test_repr_names_rows_dim_backbone(sample):
    text = repr(open_latents(sample[0]))
    assert "rows=6" in text and f"dim={DIM}" in text and "backbone=toy" in text


def test_open_latents_passes_dataset_through(sample):
    ds = open_latents(sample[0])
    assert open_latents(ds) is ds
    assert len(open_latents(str(sample[0]))) == 6


# -- embedding column ---------------------------------------------------------


def test_embedding_column_is_fixed_size_float32(sample):
    ds = open_latents(sample[0])
    field = ds.schema.field("embedding")
    # required vectors of required floats: Parquet stores no definition levels (faster reads)
    assert field.type == pa.list_(pa.field("element", pa.float32(), nullable=False), DIM)
    assert not field.nullable
    assert pa.types.is_fixed_size_list(field.type)
    assert field.type.list_size == DIM
    # The file itself (not just the dataset view) stores the same type and the metadata.
    file_schema = pq.read_schema(ds.files[0])
    assert file_schema.field("embedding").type == field.type
    assert META_KEY in file_schema.metadata


def test_float16_storage(tmp_path):
    vecs = vectors(5)
    write_latents(tmp_path / "lat", list("abcde"), vecs, toy(), dtype="float16")
    ds = open_latents(tmp_path / "lat")
    assert ds.schema.field("embedding").type.value_type == pa.float16()
    assert ds.schema.field("embedding").type.list_size == DIM
    x = ds.to_numpy()
    assert x.dtype == np.float16
    assert x.shape == (5, DIM)
    np.testing.assert_allclose(x.astype(np.float32), vecs, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(x, vecs.astype(np.float16))
    frame = ds.to_pandas()
    assert frame["embedding"].iloc[0].dtype == np.float16


# -- to_numpy -----------------------------------------------------------------


def test_to_numpy_single_chunk_is_read_only(sample):
    ds = open_latents(sample[0])
    table = ds.to_table(["embedding"])
    assert table.column("embedding").num_chunks == 1
    x = ds.to_numpy()
    assert not x.flags.writeable and x.flags.c_contiguous  # read straight from the pages


def test_vectors_from_column_shares_arrow_memory():
    flat = pa.array(np.arange(40, dtype=np.float32))
    column = pa.FixedSizeListArray.from_arrays(flat, 4)
    x = vectors_from_column(pa.chunked_array([column]), 4)
    address = flat.buffers()[1].address
    assert x.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(x, np.arange(40, dtype=np.float32).reshape(10, 4))
    # A slice keeps its offset and still shares memory.
    sliced = vectors_from_column(column.slice(3, 4), 4)
    assert sliced.__array_interface__["data"][0] == address + 3 * 4 * 4
    np.testing.assert_array_equal(sliced, np.arange(12, 28, dtype=np.float32).reshape(4, 4))


def test_vectors_from_column_chunks_and_empty():
    a = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 4)
    b = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, 20, dtype=np.float32)), 4)
    x = vectors_from_column(pa.chunked_array([a, b]), 4)
    np.testing.assert_array_equal(x, np.arange(20, dtype=np.float32).reshape(5, 4))
    empty = vectors_from_column(pa.chunked_array([], type=a.type), 4)
    assert empty.shape == (0, 4)


def test_to_numpy_across_parts_in_order(multipart):
    path, ids, expected = multipart
    ds = open_latents(path)
    assert [f.name[:10] for f in ds.files] == [f"part-{i:05d}" for i in range(5)]
    assert len(ds) == 50
    assert ds.to_table(["embedding"]).column("embedding").num_chunks > 1
    x = ds.to_numpy()
    assert x.shape == (50, DIM)
    np.testing.assert_array_equal(x, expected)
    assert ds.ids().tolist() == ids


def test_to_numpy_across_row_groups(tmp_path):
    vecs = vectors(30)
    with LatentWriter(tmp_path / "lat", toy(), row_group_rows=10) as writer:
        for start in range(0, 30, 10):
            writer.write(
                [str(i) for i in range(start, start + 10)], [""] * 10, vecs[start : start + 10]
            )
    ds = open_latents(tmp_path / "lat")
    assert len(ds.files) == 1
    assert pq.ParquetFile(ds.files[0]).metadata.num_row_groups == 3
    np.testing.assert_array_equal(ds.to_numpy(), vecs)


# -- filters ------------------------------------------------------------------


def test_filter_equals(sample):
    path, vecs = sample
    ds = open_latents(path)
    red = ds.filter(color="red")
    assert isinstance(red, LatentDataset)
    assert len(red) == 2
    assert red.ids().tolist() == ["a", "d"]
    np.testing.assert_array_equal(red.to_numpy(), vecs[[0, 3]])
    assert len(ds) == 6  # the original view is untouched
    assert ds.filter(flag=True).ids().tolist() == ["a", "d", "f"]
    assert ds.filter(n=3).ids().tolist() == ["c"]


def test_filter_list_means_any_of(sample):
    path, vecs = sample
    ds = open_latents(path)
    view = ds.filter(color=["red", "green"])
    assert view.ids().tolist() == ["a", "d", "e"]
    np.testing.assert_array_equal(view.to_numpy(), vecs[[0, 3, 4]])
    assert ds.filter(n=(1, 5, 99)).ids().tolist() == ["a", "e"]
    assert ds.filter(n=np.array([4, 6])).ids().tolist() == ["d", "f"]


def test_filter_expression_and_chaining(sample):
    path, vecs = sample
    ds = open_latents(path)
    big = ds.filter(pc.field("n") >= 3)
    assert big.ids().tolist() == ["c", "d", "e", "f"]
    chained = big.filter(color="blue")
    assert chained.ids().tolist() == ["f"]
    assert len(chained) == 1
    np.testing.assert_array_equal(chained.to_numpy(), vecs[[5]])
    both = ds.filter(pc.field("x") > 1.0, flag=True)
    assert both.ids().tolist() == ["d", "f"]
    assert len(ds.filter(color="red").filter(color="blue")) == 0
    assert ds.filter(color="purple").to_numpy().shape == (0, DIM)


def test_filter_keeps_files_and_meta(sample):
    ds = open_latents(sample[0])
    view = ds.filter(color="red")
    assert view.files == ds.files and view.meta == ds.meta and view.path == ds.path


def test_filter_unknown_column(sample):
    ds = open_latents(sample[0])
    with pytest.raises(InputError) as exc:
        ds.filter(shape="round")
    message = one_line(exc)
    assert "'shape'" in message and str(sample[0]) in message and "color" in message


def test_filter_across_parts(multipart):
    path, ids, expected = multipart
    view = open_latents(path).filter(j=[0, 9])
    assert len(view) == 10
    assert view.ids().tolist() == [i for i in ids if i.endswith(("-00", "-09"))]
    rows = [ids.index(i) for i in view.ids()]
    np.testing.assert_array_equal(view.to_numpy(), expected[rows])


# -- tables and frames ----------------------------------------------------------


def test_to_pandas_with_embedding(sample):
    path, vecs = sample
    frame = open_latents(path).to_pandas()
    assert list(frame.columns) == ["id", "source", "n", "x", "color", "flag", "embedding"]
    assert len(frame) == 6
    assert frame["id"].tolist() == IDS
    assert pd.isna(frame["n"].iloc[1]) and frame["n"].iloc[2] == 3
    assert pd.isna(frame["color"].iloc[2]) and frame["color"].iloc[0] == "red"
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_list()), vecs)


def test_to_pandas_without_embedding_and_filtered(sample):
    path, vecs = sample
    ds = open_latents(path)
    frame = ds.to_pandas(embedding=False)
    assert "embedding" not in frame.columns
    assert list(frame.columns) == ds.columns
    frame = ds.filter(color="blue").to_pandas(columns=["id", "embedding"])
    assert list(frame.columns) == ["id", "embedding"]
    assert frame["id"].tolist() == ["b", "f"]
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_list()), vecs[[1, 5]])


def test_to_table_column_selection(sample):
    ds = open_latents(sample[0])
    table = ds.to_table(["color", "id"])
    assert table.column_names == ["color", "id"]
    assert table.num_rows == 6
    assert ds.filter(flag=False).to_table(["id"]).column("id").to_pylist() == ["b", "e"]
    assert ds.to_table().column_names == [*ds.columns, "embedding"]


def test_to_table_unknown_column(sample):
    ds = open_latents(sample[0])
    with pytest.raises(InputError) as exc:
        ds.to_table(["id", "nope"])
    message = one_line(exc)
    assert "'nope'" in message and str(sample[0]) in message
    with pytest.raises(InputError, match="nope"):
        ds.to_pandas(columns=["nope"])


# -- batches ------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 10, 1000])
def test_iter_batches(multipart, batch_size):
    path, ids, expected = multipart
    batches = list(open_latents(path).iter_batches(batch_size=batch_size))
    assert all(isinstance(b, LatentBatch) for b in batches)
    assert all(0 < len(b.ids) <= batch_size for b in batches)
    assert all(b.vectors.shape == (len(b.ids), DIM) for b in batches)
    assert all(b.table.num_rows == len(b.ids) for b in batches)
    assert all("embedding" not in b.table.column_names for b in batches)
    assert np.concatenate([b.ids for b in batches]).tolist() == ids
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), expected)
    if batch_size == 1:
        assert len(batches) == 50


def test_iter_batches_columns_and_filter(multipart):
    path, ids, expected = multipart
    view = open_latents(path).filter(pc.field("k") >= 3)
    batches = list(view.iter_batches(batch_size=4, columns=["k", "j"]))
    assert batches[0].table.column_names == ["id", "k", "j"]
    got = np.concatenate([b.ids for b in batches]).tolist()
    assert got == ids[30:]
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), expected[30:])
    assert [k for b in batches for k in b.table.column("k").to_pylist()] == [3] * 10 + [4] * 10
    assert list(open_latents(path).filter(k=99).iter_batches()) == []


# -- fingerprint ----------------------------------------------------------------


def test_fingerprint_stable_then_changes_on_append(sample):
    path, _ = sample
    first = open_latents(path).fingerprint()
    assert isinstance(first, str) and len(first) == 16
    assert open_latents(path).fingerprint() == first
    assert open_latents(path).filter(color="red").fingerprint() == first
    extra = {"n": [7], "x": [7.5], "color": ["red"], "flag": [False]}
    write_latents(path, ["g"], vectors(1, seed=9), toy(size=224), columns=extra)
    second = open_latents(path).fingerprint()
    assert second != first
    assert open_latents(path).fingerprint() == second
    assert len(open_latents(path)) == 7


def test_fingerprint_changes_when_a_part_is_replaced_by_identical_bytes(sample):
    """os.replace with a byte-identical copy: same name, size and rows, a new inode."""
    path, _ = sample
    part = open_latents(path).files[0]
    first = open_latents(path).fingerprint()
    copy = part.with_name(".copy.tmp")
    copy.write_bytes(part.read_bytes())
    os.replace(copy, part)
    assert open_latents(path).fingerprint() != first


def test_fingerprint_changes_when_a_part_is_rewritten_in_place(sample):
    """Same inode, name, size and rows; only the modification time tells."""
    path, _ = sample
    part = open_latents(path).files[0]
    first = open_latents(path).fingerprint()
    data = part.read_bytes()
    with part.open("r+b") as f:
        f.write(data)
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later write
    assert open_latents(path).fingerprint() != first


# -- errors table ---------------------------------------------------------------


def test_errors_empty_when_none(sample):
    errors = open_latents(sample[0]).errors()
    assert isinstance(errors, pd.DataFrame)
    assert list(errors.columns) == ["source", "reason"]
    assert len(errors) == 0


# -- damaged or foreign folders ---------------------------------------------------


def test_open_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as exc:
        open_latents(missing)
    assert str(missing) in one_line(exc)


def test_open_path_that_is_a_file(tmp_path):
    file = tmp_path / "file.parquet"
    file.write_bytes(b"x")
    with pytest.raises(InputError) as exc:
        open_latents(file)
    assert str(file) in one_line(exc)


def test_open_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as exc:
        open_latents(tmp_path / "empty")
    message = one_line(exc)
    assert str(tmp_path / "empty") in message and "part-*.parquet" in message


def test_open_folder_with_only_other_files(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    pq.write_table(pa.table({"a": [1]}), folder / "data.parquet")
    with pytest.raises(InputError, match="holds no"):
        open_latents(folder)


def test_open_non_embedkit_parquet(tmp_path):
    folder = tmp_path / "foreign"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "v": [1.0]}), folder / "part-00000.parquet")
    with pytest.raises(InputError) as exc:
        open_latents(folder)
    message = one_line(exc)
    assert str(folder / "part-00000.parquet") in message and "embedkit" in message


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not parquet" * 10])
def test_open_corrupt_part(sample, content):
    path, _ = sample
    bad = path / "part-00001.parquet"
    bad.write_bytes(content)
    with pytest.raises(InputError) as exc:
        open_latents(path)
    message = one_line(exc)
    assert str(bad) in message and "delete it" in message


def test_open_corrupt_first_part(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "part-00000.parquet").write_bytes(b"PAR1 not really PAR1")
    with pytest.raises(InputError) as exc:
        open_latents(folder)
    assert str(folder / "part-00000.parquet") in one_line(exc)


def _hand_written_part(path: Path, meta: LatentMeta, n: int = 2) -> None:
    flat = pa.array(vectors(n, meta.dim).reshape(-1), pa.float32())
    table = pa.table(
        {
            "id": [f"h{i}" for i in range(n)],
            "source": [""] * n,
            "embedding": pa.FixedSizeListArray.from_arrays(flat, meta.dim),
        }
    )
    table = table.replace_schema_metadata({META_KEY: meta.to_bytes()})
    pq.write_table(table, path / "part-00001.parquet")


@pytest.mark.parametrize(
    "other",
    [
        LatentMeta(toy("other"), DIM),
        LatentMeta(toy(size=999), DIM),
        LatentMeta(toy(dim=4), 4),
        LatentMeta(toy(size=224), DIM, normalized=True),
    ],
    ids=["name", "config", "dim", "normalized"],
)
def test_open_mixed_backbones(sample, other):
    path, _ = sample
    _hand_written_part(path, other)
    with pytest.raises(InputError) as exc:
        open_latents(path)
    message = one_line(exc)
    assert "part-00001.parquet" in message and re.search(r"part-00000-\w{8}\.parquet", message)
    assert other.backbone.name in message and "one backbone" in message


def test_open_hand_written_part_with_same_meta(sample):
    path, _ = sample
    _hand_written_part(path, open_latents(path).meta)
    ds = open_latents(path)
    assert len(ds) == 8
    assert ds.ids().tolist()[-2:] == ["h0", "h1"]


def test_hidden_temp_files_ignored(sample):
    path, vecs = sample
    (path / ".part-00001.deadbeef.tmp").write_bytes(b"half a part")
    (path / ".part-00001.parquet.cafe.tmp").write_bytes(b"half a part")
    ds = open_latents(path)
    assert [f.name[:11] for f in ds.files] == ["part-00000-"]
    np.testing.assert_array_equal(ds.to_numpy(), vecs)


# -- write_latents input checks ---------------------------------------------------


def test_duplicate_ids_refused(tmp_path):
    with pytest.raises(InputError) as exc:
        write_latents(tmp_path / "lat", ["a", "b", "a"], vectors(3), toy())
    assert "unique" in one_line(exc)
    assert not list(tmp_path.glob("lat/part-*"))


def test_duplicate_ids_after_str_conversion_refused(tmp_path):
    with pytest.raises(InputError):
        write_latents(tmp_path / "lat", [1, "1"], vectors(2), toy())


def test_write_latents_non_str_ids_and_default_sources(tmp_path):
    path = write_latents(tmp_path / "lat", [10, 20, 30], vectors(3), toy())
    assert path == tmp_path / "lat"
    ds = open_latents(path)
    assert ds.ids().tolist() == ["10", "20", "30"]
    assert ds.to_table(["source"]).column("source").to_pylist() == ["", "", ""]
    assert ds.columns == ["id", "source"]
