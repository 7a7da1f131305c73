"""LatentWriter: parts, row groups, atomic renames, appends, refusals and the errors table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.errors import InputError
from embedkit.files import atomic_write_table
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents, read_meta
from embedkit.store.lock import STATE_DIR
from embedkit.store.writer import LatentWriter, write_latents

DIM = 4


def toy(name: str = "toy", dim: int = DIM, **config) -> BackboneInfo:
    return BackboneInfo(name=name, dim=dim, config=config)


def vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def ids_for(batch: int, n: int) -> list[str]:
    return [f"b{batch:02d}-{i:03d}" for i in range(n)]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


PART_TOKEN = re.compile(r"^(\.?part-\d{5})-[0-9a-f]{8}")


def names(path: Path) -> list[str]:
    """Every entry in the folder, hidden ones included, but the lock folder; part names
    without their random token (part-00003-1a2b3c4d.parquet -> part-00003.parquet)."""
    return sorted(PART_TOKEN.sub(r"\1", p.name) for p in path.iterdir() if p.name != STATE_DIR)


def part(path: Path, number: int) -> Path:
    """The part file numbered ``number``."""
    (found,) = path.glob(f"part-{number:05d}-*.parquet")
    return found


def part_rows(path: Path) -> list[int]:
    return [pq.ParquetFile(f).metadata.num_rows for f in sorted(path.glob("part-*.parquet"))]


def write_batches(writer: LatentWriter, sizes: list[int], seed: int = 0) -> np.ndarray:
    written = []
    for k, n in enumerate(sizes):
        vecs = vectors(n, seed=seed + k)
        writer.write(ids_for(k, n), [f"src/{k}/{i}" for i in range(n)], vecs)
        written.append(vecs)
    return np.concatenate(written)


# -- parts and row groups -----------------------------------------------------------


def test_rows_per_part_makes_numbered_parts(tmp_path):
    path = tmp_path / "lat"
    with LatentWriter(path, toy(), rows_per_part=100) as writer:
        expected = write_batches(writer, [50] * 7)
    assert names(path) == [f"part-{i:05d}.parquet" for i in range(4)]
    assert part_rows(path) == [100, 100, 100, 50]
    assert writer.rows_written == 350
    ds = open_latents(path)
    np.testing.assert_array_equal(ds.to_numpy(), expected)
    assert ds.ids().tolist() == [i for k in range(7) for i in ids_for(k, 50)]


def test_parts_appear_while_writing(tmp_path):
    path = tmp_path / "lat"
    writer = LatentWriter(path, toy(), rows_per_part=100)
    write_batches(writer, [60])
    assert names(path) == []  # below rows_per_part: nothing complete yet
    writer.write(ids_for(1, 60), [""] * 60, vectors(60, seed=1))
    assert names(path) == ["part-00000.parquet"]
    assert part_rows(path) == [120]  # a batch is never split across parts
    writer.write(ids_for(2, 10), [""] * 10, vectors(10, seed=2))
    assert names(path) == ["part-00000.parquet"]
    writer.close()
    assert part_rows(path) == [120, 10]


def test_row_groups_follow_row_group_rows(tmp_path):
    path = tmp_path / "lat"
    with LatentWriter(path, toy(), row_group_rows=32) as writer:
        expected = write_batches(writer, [10] * 10)
    meta = pq.ParquetFile(part(path, 0)).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [40, 40, 20]  # flushed as soon as 32 rows are buffered
    np.testing.assert_array_equal(open_latents(path).to_numpy(), expected)


def test_row_group_flush_writes_hidden_temp_until_part_closes(tmp_path):
    path = tmp_path / "lat"
    writer = LatentWriter(path, toy(), row_group_rows=10)
    write_batches(writer, [15])
    temps = [n for n in names(path) if n.startswith(".part-00000.") and n.endswith(".tmp")]
    assert len(temps) == 1 and len(names(path)) == 1
    assert writer.rows_written == 15
    writer.flush()
    assert names(path) == ["part-00000.parquet"]
    writer.write(ids_for(1, 3), [""] * 3, vectors(3))
    writer.close()
    assert names(path) == ["part-00000.parquet", "part-00001.parquet"]
    assert part_rows(path) == [15, 3]


def test_seconds_per_part_zero_closes_part_each_write(tmp_path):
    path = tmp_path / "lat"
    writer = LatentWriter(path, toy(), seconds_per_part=0)
    for k in range(3):
        writer.write(ids_for(k, 2), [""] * 2, vectors(2, seed=k))
        assert names(path) == [f"part-{i:05d}.parquet" for i in range(k + 1)]
    writer.write([], [], np.zeros((0, DIM), np.float32))  # an empty write is a no-op
    writer.close()
    assert part_rows(path) == [2, 2, 2]
    assert writer.rows_written == 6


def test_no_hidden_files_after_close(tmp_path):
    path = tmp_path / "lat"
    with LatentWriter(path, toy(), rows_per_part=40, row_group_rows=16) as writer:
        write_batches(writer, [7, 13, 25, 1, 30])
        writer.write_errors(["x.png"], ["broken"])
    assert not [n for n in names(path) if n.startswith(".")]
    assert not [n for n in names(path / "errors") if n.startswith(".")]
    assert sum(part_rows(path)) == 76


def test_flush_and_close_are_idempotent(tmp_path):
    path = tmp_path / "lat"
    writer = LatentWriter(path, toy())
    writer.flush()
    writer.close()
    assert names(path) == []
    write_batches(writer, [3])
    writer.flush()
    writer.flush()
    writer.close()
    assert names(path) == ["part-00000.parquet"]


def test_append_continues_numbering_and_keeps_order(tmp_path):
    path = tmp_path / "lat"
    first = vectors(5, seed=1)
    second = vectors(3, seed=2)
    write_latents(path, list("abcde"), first, toy())
    write_latents(path, list("fgh"), second, toy())
    assert names(path) == ["part-00000.parquet", "part-00001.parquet"]
    ds = open_latents(path)
    assert ds.ids().tolist() == list("abcdefgh")
    np.testing.assert_array_equal(ds.to_numpy(), np.concatenate([first, second]))
    # Numbering follows the highest part, even with a gap.
    part(path, 1).rename(path / "part-00007-0badf00d.parquet")
    write_latents(path, ["i"], vectors(1), toy())
    assert names(path)[-1] == "part-00008.parquet"


def test_append_keeps_original_metadata(tmp_path):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1), toy())
    first = read_meta(part(path, 0))
    writer = LatentWriter(path, toy())
    assert writer.meta.created == first.created
    writer.write(["b"], [""], vectors(1))
    writer.close()
    assert read_meta(part(path, 1)) == first


def test_invalid_dtype(tmp_path):
    with pytest.raises(InputError) as exc:
        LatentWriter(tmp_path / "lat", toy(), dtype="float64")
    assert "float64" in one_line(exc)


# -- stale temp files -----------------------------------------------------------------


def test_stale_temp_files_removed_on_open(tmp_path):
    path = tmp_path / "lat"
    write_latents(path, ["a", "b"], vectors(2), toy())
    stale = [path / ".part-00001.0badf00d.tmp", path / ".part-00000.parquet.1234abcd.tmp"]
    for f in stale:
        f.write_bytes(b"PAR1 half written")
    keep = path / "notes.txt"
    keep.write_text("not ours")
    ds = open_latents(path)  # the reader ignores them
    assert [f.name for f in ds.files] == [part(path, 0).name]
    assert len(ds) == 2
    LatentWriter(path, toy()).close()  # the writer removes them
    assert names(path) == ["notes.txt", "part-00000.parquet"]


# -- refusals when appending -------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [toy("bigger"), toy(size=448), toy(dim=DIM + 1)],
    ids=["name", "config", "dim"],
)
def test_append_other_backbone_refused(tmp_path, other):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1), toy(size=224))
    with pytest.raises(InputError) as exc:
        write_latents(path, ["b"], vectors(1, dim=other.dim), other)
    message = one_line(exc)
    assert str(path) in message
    assert "toy" in message and other.name in message
    assert "224" in message and str(other.config) in message and "another latent space" in message
    assert part_rows(path) == [1]


def test_append_other_backbone_refused_with_writer(tmp_path):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1), toy())
    with pytest.raises(
        InputError,
        match=r"holds latents of toy .*another latent space than vit.*refusing to add them",
    ):
        LatentWriter(path, toy("vit"))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"normalized": True}, "normalized=False"), ({"dtype": "float16"}, "dtype=float32")],
)
def test_append_other_normalized_or_dtype_refused(tmp_path, kwargs, word):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1), toy())
    with pytest.raises(InputError) as exc:
        write_latents(path, ["b"], vectors(1), toy(), **kwargs)
    message = one_line(exc)
    assert str(path) in message and word in message
    assert part_rows(path) == [1]


def test_append_same_backbone_other_device_accepted(tmp_path):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1, seed=1), toy(size=8, device="cuda:0"))
    write_latents(path, ["b"], vectors(1, seed=2), toy(size=8, device="cpu"))
    write_latents(path, ["c"], vectors(1, seed=3), toy(size=8))
    ds = open_latents(path)
    assert ds.ids().tolist() == ["a", "b", "c"]
    assert ds.backbone == toy(size=8, device="cuda:0")  # every part keeps the first's meta
    np.testing.assert_array_equal(
        ds.to_numpy(), np.concatenate([vectors(1, seed=s) for s in (1, 2, 3)])
    )


# -- bad rows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, DIM + 1), np.float32),
        np.zeros(3 * DIM, np.float32),
        np.zeros((2, DIM), np.float32),
        np.zeros((4, DIM), np.float32),
        np.zeros((3, DIM, 1), np.float32),
    ],
    ids=["dim", "flat", "too-few", "too-many", "3d"],
)
def test_wrong_vector_shape(tmp_path, bad):
    writer = LatentWriter(tmp_path / "lat", toy())
    with pytest.raises(InputError) as exc:
        writer.write(["a", "b", "c"], ["", "", ""], bad)
    message = one_line(exc)
    assert str(bad.shape) in message and f"[N, {DIM}]" in message
    writer.close()
    assert names(tmp_path / "lat") == []


def test_wrong_source_count(tmp_path):
    writer = LatentWriter(tmp_path / "lat", toy())
    with pytest.raises(InputError, match="2 sources for 3 ids"):
        writer.write(["a", "b", "c"], ["", ""], vectors(3))


def test_wrong_column_length(tmp_path):
    with pytest.raises(InputError) as exc:
        write_latents(tmp_path / "lat", ["a", "b"], vectors(2), toy(), columns={"n": [1]})
    assert "'n'" in one_line(exc)


def test_columns_must_match_existing_schema(tmp_path):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1), toy(), columns={"n": [1], "label": ["x"]})
    cases = [
        {"n": [2]},  # a column missing
        {"n": [2], "label": ["y"], "extra": [0]},  # one too many
        None,  # none at all
        {"n": ["two"], "label": ["y"]},  # a type that cannot be cast
    ]
    for k, columns in enumerate(cases):
        with pytest.raises(InputError) as exc:
            write_latents(path, [f"b{k}"], vectors(1), toy(), columns=columns)
        message = one_line(exc)
        assert str(path) in message and "label" in message
    assert part_rows(path) == [1]
    # Matching columns (even from a DataFrame, with a castable type) are accepted.
    frame = pd.DataFrame({"n": np.array([5], dtype=np.int32), "label": ["z"]})
    write_latents(path, ["c"], vectors(1), toy(), columns=frame)
    table = open_latents(path).to_table(["id", "n", "label"])
    assert table.to_pylist() == [
        {"id": "a", "n": 1, "label": "x"},
        {"id": "c", "n": 5, "label": "z"},
    ]
    assert table.schema.field("n").type == pa.int64()


def test_columns_named_like_reserved_are_ignored(tmp_path):
    path = tmp_path / "lat"
    columns = {"id": ["zz"], "source": ["zz"], "embedding": [0], "keep": [1]}
    write_latents(path, ["a"], vectors(1), toy(), columns=columns, sources=["s.png"])
    table = open_latents(path).to_table()
    assert table.column_names == ["id", "source", "keep", "embedding"]
    stats = open_latents(path).to_table(["source_size", "source_mtime_ns"])  # by name
    assert stats.column("source_size").null_count == 1  # no file behind these rows
    assert table.to_pylist()[0]["id"] == "a" and table.to_pylist()[0]["source"] == "s.png"


def test_numpy_ids_and_sources(tmp_path):
    path = tmp_path / "lat"
    with LatentWriter(path, toy()) as writer:
        writer.write(
            np.array(["a", "b"], dtype=object),
            np.array(["x.png", "y.png"]),
            vectors(2).astype(np.float64),  # converted to the stored dtype
            pd.DataFrame({"n": [1, 2]}).iloc[[0, 1]],
        )
    ds = open_latents(path)
    assert ds.ids().tolist() == ["a", "b"]
    np.testing.assert_array_equal(ds.to_numpy(), vectors(2))


# -- interruptions ----------------------------------------------------------------------


def test_exception_keeps_the_rows_written_before_it(tmp_path):
    # every row handed to write() was complete; the caller failing later (a plugin bug on
    # the next batch) does not make them wrong, and a re-run resumes after them
    path = tmp_path / "lat"
    with (
        pytest.raises(RuntimeError, match="boom"),
        LatentWriter(path, toy(), row_group_rows=5) as w,
    ):
        expected = write_batches(w, [12])
        assert any(n.endswith(".tmp") for n in names(path))  # rows already in a temp part
        raise RuntimeError("boom")
    assert names(path) == ["part-00000.parquet"]
    np.testing.assert_array_equal(open_latents(path).to_numpy(), expected)


def test_exception_keeps_earlier_complete_parts(tmp_path):
    path = tmp_path / "lat"
    with pytest.raises(ValueError), LatentWriter(path, toy(), rows_per_part=10) as writer:
        write_batches(writer, [10, 10, 4])
        raise ValueError("stop")
    assert names(path) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert part_rows(path) == [10, 10, 4]


def test_keyboard_interrupt_keeps_rows(tmp_path):
    path = tmp_path / "lat"
    with pytest.raises(KeyboardInterrupt), LatentWriter(path, toy(), row_group_rows=5) as writer:
        expected = write_batches(writer, [7, 2])
        raise KeyboardInterrupt
    assert names(path) == ["part-00000.parquet"]
    ds = open_latents(path)
    assert len(ds) == 9
    np.testing.assert_array_equal(ds.to_numpy(), expected)


def test_failed_write_latents_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "lat"

    class Boom(Exception):
        pass

    def explode(self, table, row_group_size=None):
        raise Boom

    monkeypatch.setattr(pq.ParquetWriter, "write_table", explode)
    with pytest.raises(Boom):
        write_latents(path, ["a", "b"], vectors(2), toy())
    assert not list(path.glob("part-*"))  # no part file claims the rows
    LatentWriter(path, toy())  # removes the temp a failed close may leave
    assert names(path) == []


# -- errors table -------------------------------------------------------------------------


def test_write_errors_accumulate(tmp_path):
    path = tmp_path / "lat"
    with LatentWriter(path, toy()) as writer:
        writer.write(["a"], ["a.png"], vectors(1))
        writer.write_errors(["b.png", "c.png"], ["cannot identify image", "truncated"])
        writer.write_errors([], [])  # nothing to record: no file
        writer.write_errors(["d.png"], ["empty file"])
    assert writer.errors_written == 3
    assert names(path / "errors") == ["part-00000.parquet"]  # recorded, written together
    errors = open_latents(path).errors()
    assert list(errors.columns) == ["source", "reason"]
    assert errors.to_dict("records") == [
        {"source": "b.png", "reason": "cannot identify image"},
        {"source": "c.png", "reason": "truncated"},
        {"source": "d.png", "reason": "empty file"},
    ]
    # A later run adds to them.
    with LatentWriter(path, toy()) as writer:
        writer.write_errors(["e.png"], ["too small"])
    assert open_latents(path).errors()["source"].tolist() == ["b.png", "c.png", "d.png", "e.png"]
    assert open_latents(path).filter(id="a").errors()["source"].tolist()[-1] == "e.png"


def test_write_errors_atomic(tmp_path, monkeypatch):
    path = tmp_path / "lat"
    write_latents(path, ["a"], vectors(1), toy())
    writer = LatentWriter(path, toy())
    real_write_table = pq.write_table

    def half_write(table, where, **kwargs):
        real_write_table(table.slice(0, 1), where, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    writer.write_errors(["x.png", "y.png"], ["bad", "bad"])  # recorded, not written yet
    with pytest.raises(OSError, match="disk full"):
        writer.flush_errors()
    assert not list((path / "errors").glob("part-*.parquet"))  # no half-written table
    assert len(open_latents(path).errors()) == 0
    monkeypatch.setattr(pq, "write_table", real_write_table)
    writer.flush_errors()  # the failed flush kept them
    assert open_latents(path).errors()["source"].tolist() == ["x.png", "y.png"]


def test_atomic_write_table(tmp_path):
    target = tmp_path / "t.parquet"
    atomic_write_table(pa.table({"a": [1, 2]}), target)
    atomic_write_table(pa.table({"a": [3]}), target)  # replaces
    assert pq.read_table(target).column("a").to_pylist() == [3]
    assert names(tmp_path) == ["t.parquet"]
