"""Staged parts: written by others (Ray part writers) under hidden names, invisible until
the dataset's one writer commits them; checked before they become visible; deleted when
a run dies before committing them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.errors import InputError
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.staging import PartStager, StagedPart
from embedkit.store.tables import cast_rows, rows_table
from embedkit.store.writer import LatentWriter

DIM = 4
LABELS = pa.schema([("label", pa.string()), ("score", pa.float64())])


def rows(writer: LatentWriter, start: int, n: int) -> pa.Table:
    """``n`` rows (ids ``r<start>``...) with a label and a score, in the writer's schema."""
    ids = [f"r{i:03d}" for i in range(start, start + n)]
    vectors = np.arange(start, start + n, dtype=np.float32)[:, None] * np.ones(DIM, np.float32)
    columns = {"label": [f"l{i % 3}" for i in range(n)], "score": np.linspace(0, 1, n)}
    table = rows_table(writer.meta, ids, [f"src/{i}" for i in ids], vectors, columns)
    return cast_rows(table, writer.schema, writer.path)


def stager(writer: LatentWriter, **options) -> PartStager:
    defaults = {"rows_per_part": 100, "seconds_per_part": 60.0, "row_group_rows": 16}
    return PartStager(writer.path, writer.schema, durable=True, **(defaults | options))


@pytest.fixture
def writer(tmp_path: Path):
    writer = LatentWriter(tmp_path / "lat", BackboneInfo("toy", DIM))
    writer.fix_schema(LABELS)
    yield writer
    writer.close()


def visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("part-*.parquet"))


def test_staged_parts_are_invisible_until_committed(writer: LatentWriter) -> None:
    worker = stager(writer, rows_per_part=40)
    closed = [part for start in range(0, 100, 10) for part in worker.write(rows(writer, start, 10))]
    closed += worker.close()

    assert [part.rows for part in closed] == [40, 40, 20]
    assert visible(writer.path) == []  # staged: no reader sees them
    assert sorted(p.name for p in writer.path.glob(".part-*.tmp")) == sorted(
        part.name for part in closed
    )
    for part in closed:
        writer.commit(part)
    names = visible(writer.path)
    assert [name[:11] for name in names] == ["part-00000-", "part-00001-", "part-00002-"]
    assert not list(writer.path.glob(".*.tmp"))
    ds = open_latents(writer.path)
    assert ds.ids().tolist() == [f"r{i:03d}" for i in range(100)]
    np.testing.assert_array_equal(ds.to_numpy()[:, 0], np.arange(100, dtype=np.float32))
    assert writer.rows_written == 100
    meta = pq.ParquetFile(writer.path / names[0]).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [20, 20]


def test_parts_close_after_their_seconds(writer: LatentWriter) -> None:
    worker = stager(writer, seconds_per_part=0.2)
    assert worker.write(rows(writer, 0, 3)) == []
    time.sleep(0.25)
    (part,) = worker.write(rows(writer, 3, 2))  # due: closed with the batch that came late
    assert part.rows == 5 and worker.close() == []


def test_commit_refuses_what_it_cannot_vouch_for(writer: LatentWriter, tmp_path: Path) -> None:
    missing = StagedPart(".part-wmissing.tmp", 10)
    with pytest.raises(InputError) as info:
        writer.commit(missing)
    assert str(info.value) == (
        f"{writer.path / missing.name} (a part a worker wrote) is not there as seen from this "
        "machine: the output folder must be on a file system every node shares, at the same path"
    )
    (part,) = stager(writer).write(rows(writer, 0, 100))
    with pytest.raises(InputError, match=r"holds 100 rows of columns .* not the 99 rows"):
        writer.commit(StagedPart(part.name, 99))  # not the rows its writer reported
    other = LatentWriter(tmp_path / "other", BackboneInfo("another", DIM))
    other.fix_schema(LABELS)
    (foreign,) = stager(other).write(rows(other, 0, 100))
    (writer.path / part.name).unlink()
    (other.path / foreign.name).rename(writer.path / part.name)
    with pytest.raises(InputError, match="not the 100 rows of this dataset's"):
        writer.commit(part)  # another dataset's part (another backbone in its metadata)
    other.close()
    assert visible(writer.path) == []


def test_a_new_writer_deletes_what_a_dead_run_staged(tmp_path: Path) -> None:
    first = LatentWriter(tmp_path / "lat", BackboneInfo("toy", DIM))
    first.fix_schema(LABELS)
    worker = stager(first)
    (committed,) = worker.write(rows(first, 0, 100))
    first.commit(committed)
    worker.write(rows(first, 100, 50))
    worker.flush_row_group()  # a part half written when the run died
    assert stager(first, rows_per_part=10).write(rows(first, 150, 10))  # closed, not committed
    first.close()  # the driver's lock released (as the OS does for a killed run)
    assert len(list((tmp_path / "lat").glob(".part-*.tmp"))) == 2

    LatentWriter(tmp_path / "lat", BackboneInfo("toy", DIM)).close()
    assert not list((tmp_path / "lat").glob(".part-*.tmp"))
    assert open_latents(tmp_path / "lat").ids().tolist() == [f"r{i:03d}" for i in range(100)]


def test_abort_drops_the_open_part(writer: LatentWriter) -> None:
    worker = stager(writer)
    worker.write(rows(writer, 0, 20))  # a row group flushed: the staged file exists
    assert len(list(writer.path.glob(".part-*.tmp"))) == 1
    worker.abort()
    assert not list(writer.path.glob(".part-*.tmp")) and worker.close() == []


def test_fix_schema_checks_the_columns_against_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "lat"
    with LatentWriter(path, BackboneInfo("toy", DIM)) as first:
        first.write(["a"], ["src/a"], np.zeros((1, DIM), np.float32), {"label": ["x"]})
    again = LatentWriter(path, BackboneInfo("toy", DIM))
    assert again.fix_schema(pa.schema([("label", pa.string())])) == pq.read_schema(
        next(path.glob("part-*.parquet"))
    )
    with pytest.raises(InputError) as info:
        again.fix_schema(pa.schema([("label", pa.string()), ("extra", pa.int64())]))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(
        "columns ['id', 'source', 'source_size', 'source_mtime_ns', 'label', 'extra', "
        "'embedding'] do not match the dataset's"
    )
    again.close()
