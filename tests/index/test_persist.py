"""The saved index files are checked against index.json before faiss reads them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.errors import InputError
from embedkit.index import build_index, index_dir, load_index
from embedkit.index.search import clear_index_cache, neighbors
from embedkit.plugins.info import BackboneInfo
from embedkit.store.writer import write_latents

N, DIM = 500, 16
MISMATCH = (
    r"^the index file .*index/{name} does not match index.json \(truncated or replaced\); "
    r"re-run `embedkit index .*lat`$"
)


def make_latents(path: Path, seed: int) -> Path:
    x = np.random.default_rng(seed).normal(size=(N, DIM)).astype(np.float32)
    return write_latents(path, [f"r{i}" for i in range(N)], x, BackboneInfo("test-encoder", DIM))


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = make_latents(tmp_path / "lat", seed=0)
    build_index(path, kind="flat", progress=False)
    return path


def refused(path: Path, name: str) -> None:
    """load_index (both read paths) and neighbors refuse with the one-line mismatch error."""
    for mmap in (False, True):
        with pytest.raises(InputError, match=MISMATCH.format(name=name)) as err:
            load_index(path, mmap=mmap)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=MISMATCH.format(name=name)):
        neighbors(path, ids=["r0"], k=3)


@pytest.fixture
def no_faiss_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_index(*args, **kwargs):
        pytest.fail("faiss.read_index was called on a file that does not match index.json")

    monkeypatch.setattr(faiss, "read_index", read_index)


def test_index_json_records_size_and_sha256_of_each_file(saved: Path) -> None:
    folder = index_dir(saved)
    files = json.loads((folder / "index.json").read_text())["files"]
    assert set(files) == {"index.faiss", "ids.parquet"}
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert load_index(saved).info.files == files


def test_truncated_index_file_is_refused_before_faiss_reads_it(saved: Path, no_faiss_read) -> None:
    target = index_dir(saved) / "index.faiss"
    with target.open("r+b") as f:
        f.truncate(target.stat().st_size // 2)
    refused(saved, "index.faiss")


def test_index_file_swapped_for_one_of_the_same_size_is_refused(
    saved: Path, tmp_path: Path, no_faiss_read
) -> None:
    other = make_latents(tmp_path / "other", seed=1)
    build_index(other, kind="flat", progress=False)
    target = index_dir(saved) / "index.faiss"
    size = target.stat().st_size
    shutil.copyfile(index_dir(other) / "index.faiss", target)
    assert target.stat().st_size == size  # only the digest can tell
    refused(saved, "index.faiss")


def test_ids_file_truncated_or_swapped_is_refused(saved: Path) -> None:
    target = index_dir(saved) / "ids.parquet"
    original = target.read_bytes()
    table = pq.read_table(target)
    ids = table.column("id").to_pylist()
    ids[-2:] = ids[:-3:-1]  # the last two rows swap ids
    pq.write_table(table.set_column(0, "id", pa.array(ids, pa.string())), target)
    assert target.stat().st_size == len(original)  # a valid ids file: only the digest can tell
    refused(saved, "ids.parquet")
    target.write_bytes(original[: len(original) // 2])
    refused(saved, "ids.parquet")
    target.write_bytes(original)
    assert len(neighbors(saved, ids=["r0"], k=3)) == 3


def test_index_json_without_digests_needs_a_rebuild(saved: Path, no_faiss_read) -> None:
    info_path = index_dir(saved) / "index.json"
    data = json.loads(info_path.read_text())
    data.pop("files", None)  # as written before file digests were recorded
    info_path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"index.json .*no file digests.*re-run `embedkit index"):
        load_index(saved)
    with pytest.raises(InputError, match="no file digests"):
        neighbors(saved, ids=["r0"], k=3)


def test_index_json_without_digests_is_rebuilt_on_request(saved: Path) -> None:
    info_path = index_dir(saved) / "index.json"
    data = json.loads(info_path.read_text())
    data.pop("files", None)
    info_path.write_text(json.dumps(data))
    assert load_index(saved, rebuild=True).ntotal == N
    assert set(json.loads(info_path.read_text())["files"]) == {"index.faiss", "ids.parquet"}
    assert load_index(saved).ntotal == N
