"""Indexes whose inverted lists live on disk (embedkit.index.ondisk): built straight into
a ``.ivfdata`` file beside the index file, saved with it (size and sha256 checked),
searched memory-mapped and read-only by ``neighbors`` and ``embedkit search``, rebuilt
(never modified in place) when the latents change; the same results as in RAM."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from embedkit.cli import cli
from embedkit.errors import InputError
from embedkit.index import build_index, index_dir, load_index, neighbors, update_index
from embedkit.index.choose import IndexChoice
from embedkit.index.ondisk import faiss_quiet, lists_file, on_disk_choice
from embedkit.index.search import clear_index_cache
from embedkit.plugins.info import BackboneInfo
from embedkit.store.writer import write_latents

DIM = 16


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, DIM))
    return (centers[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, DIM))).astype("f4")


def add_part(path: Path, name: str, n: int, seed: int) -> None:
    ids = [f"{name}-{i}" for i in range(n)]
    write_latents(path, ids, clustered(n, seed), BackboneInfo("test-encoder", DIM))


@pytest.fixture
def latents(tmp_path: Path) -> Path:
    path = tmp_path / "lat"
    add_part(path, "a", 12_000, 0)
    add_part(path, "b", 12_000, 1)
    clear_index_cache()
    return path


def test_on_disk_choices_drop_refine_and_fast_scan():
    def adapted(factory: str) -> str:
        return on_disk_choice(IndexChoice("ivfpq", factory, "why")).factory

    assert adapted("IVF1024,PQ16x4fs,RFlat") == "IVF1024,PQ16"
    assert adapted("IVF256,SQ8,RFlat") == "IVF256,SQ8"
    assert adapted("IVF256,PQ8,Refine(SQfp16)") == "IVF256,PQ8"
    assert adapted("IVF256,Flat") == "IVF256,Flat"


def test_lists_on_disk_give_the_results_of_lists_in_ram(latents: Path, capfd):
    in_ram = build_index(latents, kind="IVF128,SQ8", save=False, progress=False)
    on_disk = build_index(latents, kind="IVF128,SQ8", on_disk=True, progress=True)

    lists = Path(lists_file(on_disk.index))
    assert lists.parent == index_dir(latents) and lists.suffix == ".ivfdata"
    assert lists.name in on_disk.info.files and on_disk.info.recall == in_ram.info.recall
    queries = clustered(100, 5)
    faiss.normalize_L2(queries)
    assert np.array_equal(in_ram.search(queries, 10)[1], on_disk.search(queries, 10)[1])
    out = capfd.readouterr().out
    assert "resizing" not in out and "recall@10" in out  # faiss' C prints are silenced only

    loaded = load_index(latents)
    assert lists_file(loaded.index) == str(lists)  # read from the index's own folder
    # read-only: a saved index is never changed in place
    with pytest.raises(RuntimeError), faiss_quiet():
        faiss.extract_index_ivf(loaded.index).invlists.resize(0, 0)
    assert np.array_equal(in_ram.search(queries, 10)[1], loaded.search(queries, 10)[1])
    hits = neighbors(latents, ids=["a-1", "b-2"], k=5)
    direct = neighbors(latents, ids=["a-1", "b-2"], k=5, index=in_ram)
    assert hits["id"].tolist() == direct["id"].tolist()


def test_cli_builds_and_searches_an_on_disk_index(latents: Path, capfd):
    runner = CliRunner()
    built = runner.invoke(cli, ["index", str(latents), "--kind", "ivf", "--on-disk"])
    assert built.exit_code == 0, built.output
    assert "lists on disk: lists-" in built.output
    found = runner.invoke(cli, ["search", str(latents), "--id", "a-3", "-k", "3",
                                 "--format", "json"])  # fmt: skip
    assert found.exit_code == 0, found.output
    rows = json.loads(found.output)
    assert len(rows) == 3 and rows[0]["query"] == "a-3"
    assert "IO_FLAG" not in capfd.readouterr().out


def test_changed_latents_rebuild_the_lists_and_keep_them_on_disk(latents: Path):
    first = update_index(latents, kind="ivf", on_disk=True)
    old_lists = Path(lists_file(first.index))
    add_part(latents, "c", 6_000, 2)

    again = update_index(latents)
    assert again.info.update["action"] == "rebuild"
    assert "on disk" in again.info.update["reason"]
    assert again.ntotal == 30_000 and lists_file(again.index) is not None
    assert not old_lists.exists()  # the save that replaced it removed the old file
    moved = update_index(latents, on_disk=False)  # back to RAM: a rebuild too
    assert moved.info.update["reason"].startswith("lists in RAM asked for")
    assert lists_file(moved.index) is None


def test_a_damaged_lists_file_is_refused(latents: Path):
    built = build_index(latents, kind="ivf", on_disk=True, progress=False)
    lists = Path(lists_file(built.index))
    with lists.open("r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    clear_index_cache()
    with pytest.raises(InputError, match=r"does not match index.json .*re-run `embedkit index"):
        load_index(latents)


@pytest.mark.filterwarnings("ignore:IVF64,PQ8 reaches recall")
@pytest.mark.parametrize(
    ("kind", "match"),
    [("flat", "Flat cannot keep its lists on disk"),
     ("hnsw", "HNSW32 cannot keep its lists on disk"),
     ("IVF64,PQ8x4fs,RFlat", None)],
)  # fmt: skip
def test_kinds_without_on_disk_lists(latents: Path, kind: str, match: str | None):
    if match is None:  # a fast-scan factory is adapted, not refused
        built = build_index(latents, kind=kind, on_disk=True, save=False, progress=False)
        assert built.info.factory == "IVF64,PQ8"
        return
    with pytest.raises(InputError, match=match):
        build_index(latents, kind=kind, on_disk=True, save=False, progress=False)


def test_auto_on_disk_picks_an_ivf_kind(latents: Path):
    built = build_index(latents, kind="auto", on_disk=True, save=False, progress=False)
    assert built.info.kind in ("ivf", "ivfsq", "ivfpq")
    assert lists_file(built.index) is not None
