"""Keeping a saved index up to date (embedkit.index.update, refresh, removal, recall_set,
recheck): rows of new parts added, rows of removed or rewritten parts taken out, the id
map in step, recall measured again, and a rebuild (saying why) when the index no longer
fits its choice."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from embedkit.errors import InputError
from embedkit.index import build_index, index_dir, load_index, neighbors, update_index
from embedkit.index.metric import prepare_vectors
from embedkit.index.persist import read_info
from embedkit.index.recheck import recheck_kept
from embedkit.index.removal import can_remove, remove_rows
from embedkit.index.search import clear_index_cache
from embedkit.plugins.info import BackboneInfo
from embedkit.store import open_latents
from embedkit.store.parts import remove_rows as remove_latent_rows
from embedkit.store.writer import write_latents

DIM = 24
BACKBONE = BackboneInfo("test-encoder", DIM)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_index_cache()
    yield
    clear_index_cache()


def clustered(n: int, seed: int, clusters: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(clusters, DIM)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(
        np.float32
    )


def append(path: Path, x: np.ndarray, prefix: str) -> list[str]:
    """One more part (``prefix0``, ``prefix1``, ...), as `embedkit embed` appends one."""
    ids = [f"{prefix}{i}" for i in range(len(x))]
    colors = np.array(["red", "blue", "green"])[np.arange(len(x)) % 3]
    write_latents(path, ids, x, BACKBONE, columns={"color": colors})
    return ids


@pytest.fixture
def lat(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """12,000 rows in two parts."""
    x = clustered(12_000, seed=1)
    path = tmp_path / "lat"
    append(path, x[:6000], "a")
    append(path, x[6000:], "b")
    return path, x


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    b = prepare_vectors(base, "cosine", "b")
    q = prepare_vectors(queries, "cosine", "q")
    return np.argsort(-(q @ b.T), axis=1, kind="stable")[:, :k]


def test_append_then_search_finds_the_new_rows(lat) -> None:
    path, x = lat
    built = build_index(path, kind="ivf", progress=False)
    new = clustered(1500, seed=7)
    new_ids = append(path, new, "c")
    with pytest.raises(InputError, match=r"stale: 1 part added \(1,500 rows\).*update it in place"):
        neighbors(path, vectors=new[:3], k=5)
    updated = update_index(path)
    assert updated.info.update["action"] == "update"
    assert updated.info.update["added_rows"] == 1500 and updated.info.update["removed_rows"] == 0
    assert "still fits 13,500 rows" in updated.info.update["reason"]
    assert updated.ntotal == 13_500 and updated.info.factory == built.info.factory
    # the new rows are found: each new row's nearest neighbour is itself
    hits = neighbors(path, vectors=new[:200], k=1)
    assert (hits["id"].to_numpy() == np.array(new_ids[:200])).mean() >= 0.95
    # and they answer id queries, with recall >= 0.95 against exact search over all rows
    everything = np.concatenate([x, new])
    all_ids = np.array([f"a{i}" for i in range(6000)] + [f"b{i}" for i in range(6000)] + new_ids)
    frame = neighbors(path, ids=new_ids[:100], k=10, exclude_self=False)
    truth = all_ids[exact_top(everything, new[:100], 10)]
    got = frame["id"].to_numpy().reshape(100, 10)
    assert np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)]) >= 0.95


def test_the_id_map_stays_in_step(lat) -> None:
    """After removals and additions, faiss row r holds the vector of ids[r]."""
    path, _ = lat
    build_index(path, kind="flat", progress=False)
    remove_latent_rows(path, [f"a{i}" for i in range(0, 6000, 3)])  # part a rewritten
    append(path, clustered(700, seed=3), "c")
    updated = update_index(path)
    ds = open_latents(path)
    assert sorted(updated.ids.tolist()) == sorted(ds.ids().tolist())
    rows = np.arange(0, updated.ntotal, 97)
    stored = updated.index.reconstruct_batch(rows)
    expected = prepare_vectors(ds.vectors_of(updated.ids[rows].tolist()), "cosine", "x")
    np.testing.assert_allclose(stored, expected, rtol=1e-6)
    reloaded = load_index(path)
    np.testing.assert_array_equal(reloaded.ids, updated.ids)
    np.testing.assert_array_equal(reloaded.part_of, updated.part_of)


# a factory string's list count is the user's: removals below keep it (kind="ivf" would
# follow 4*sqrt(N) and rebuild)
@pytest.mark.parametrize("kind", ["flat", "IVF64,Flat", "IVF64,SQ8,RFlat"])
def test_a_removed_part_never_comes_back(lat, kind: str) -> None:
    path, x = lat
    build_index(path, kind=kind, progress=False)
    open_latents(path).files[1].unlink()  # the "b" part
    updated = update_index(path)
    assert updated.info.update["action"] == "update", updated.info.update
    assert updated.info.update["removed_rows"] == 6000 and updated.ntotal == 6000
    assert not any(i.startswith("b") for i in updated.ids)
    frame = neighbors(path, vectors=x[6000:6300], k=10)  # queries right on the removed rows
    assert not frame["id"].str.startswith("b").any()
    with pytest.raises(InputError, match="'b5' not found"):
        neighbors(path, ids=["b5"], k=3)
    assert len(neighbors(path, ids=["a5"], k=3)) == 3


def test_rows_dropped_by_a_rewrite_are_removed_and_recall_is_measured_again(lat) -> None:
    path, x = lat
    built = build_index(path, kind="IVF64,Flat", progress=False)
    dropped = [f"b{i}" for i in range(0, 6000, 2)]
    remove_latent_rows(path, dropped)  # as `embed --update` or a curation step does
    updated = update_index(path)
    record = updated.info.update
    assert (
        record["action"] == "update"
        and "1 part rewritten (6,000 rows, now 3,000)" in (record["reason"])
    )
    assert updated.ntotal == 9000 and not set(dropped) & set(updated.ids)
    assert record["recall_lower"] >= 0.95 and "kept recall queries" in record["measured_on"]
    assert updated.info.params["nprobe"] >= built.info.params["nprobe"]
    frame = neighbors(path, vectors=x[6000:6100], k=10)
    assert not frame["id"].isin(dropped).any()


def test_the_recall_queries_are_drawn_anew_when_removals_thin_them(lat) -> None:
    path, _ = lat
    build_index(path, kind="IVF64,Flat", progress=False)
    kept = load_index(path)
    before = read_info(path)
    open_latents(path).files[0].unlink()  # half the rows, about half the recall queries
    remove_latent_rows(path, [f"b{i}" for i in range(0, 6000, 2)])  # and more
    updated = update_index(path)
    assert updated.info.update["action"] == "update"
    assert len(updated.recall) == before.recall_queries  # drawn anew, not 1/4 of them
    assert set(updated.ids[updated.recall.labels]) <= set(open_latents(path).ids())
    assert updated.info.update["recall_lower"] >= 0.95
    assert kept.ntotal == 12_000  # the index loaded before was not touched


def test_hnsw_updates_in_place_on_append_and_rebuilds_on_removal(lat) -> None:
    path, _ = lat
    build_index(path, kind="hnsw", progress=False)
    append(path, clustered(2000, seed=5), "c")
    updated = update_index(path)
    assert updated.info.update["action"] == "update"
    assert updated.info.update["measured_on"] == "200 fresh queries from the new rows"
    assert updated.info.update["recall_lower"] >= 0.95
    open_latents(path).files[0].unlink()
    with pytest.raises(InputError, match=r"1 part removed.*HNSW32 cannot remove rows.*rebuild"):
        load_index(path)
    rebuilt = update_index(path)
    assert rebuilt.info.update["action"] == "rebuild"
    assert "cannot remove rows" in rebuilt.info.update["reason"]
    assert rebuilt.ntotal == 8000 and not any(i.startswith("a") for i in rebuilt.ids)


def test_outgrowing_the_ivf_list_rule_rebuilds(lat) -> None:
    path, _ = lat
    built = build_index(path, kind="ivf", progress=False)
    assert built.info.factory == "IVF256,Flat"  # 4*sqrt(12,000) ~ 438, at most N/39
    append(path, clustered(12_000, seed=9), "c")  # 24,000 rows: IVF512
    with pytest.raises(InputError, match=r"IVF256 no longer follows.*rebuild it with"):
        load_index(path)
    rebuilt = update_index(path)
    assert rebuilt.info.update["action"] == "rebuild"
    assert "(IVF512)" in rebuilt.info.update["reason"]
    assert rebuilt.info.factory == "IVF512,Flat" and rebuilt.ntotal == 24_000


def test_auto_rules_decide_when_the_choice_no_longer_fits() -> None:
    from embedkit.index.info import IndexInfo
    from embedkit.index.refresh import plan_refresh
    from embedkit.store.vectors import PartStat

    def stats(*rows: int) -> list[PartStat]:
        return [PartStat(Path(f"part-{i:05d}-x.parquet"), 10 * r, r, i, i) for i, r in
                enumerate(rows)]  # fmt: skip

    def info(factory: str, kind: str, rows: tuple[int, ...], selection: bool) -> IndexInfo:
        from embedkit.index.parts import part_records

        return IndexInfo(
            metric="cosine", kind=kind, requested_kind="auto", factory=factory, reason="",
            params={}, ntotal=sum(rows), dim=128, recall=None, k=10, recall_queries=1000,
            target_recall=0.95, build_seconds=0.0, fingerprint="", backbone={},
            faiss_version="", parts=part_records(stats(*rows)), chosen_rows=sum(rows),
            selection={"chosen": factory} if selection else {},
        )  # fmt: skip

    measured = info("IVF1024,SQ8,RFlat", "ivfsq", (60_000, 40_000), selection=True)
    grown = plan_refresh(measured, stats(60_000, 40_000, 30_000))  # 130k: nlist 1024 still
    assert grown.action == "update" and "still fits 130,000 rows" in grown.reason
    assert "IVF2048" in plan_refresh(measured, stats(60_000, 40_000, 90_000)).reason
    outgrown = plan_refresh(measured, stats(60_000, 40_000, 110_000))  # 210k: over 2x
    assert outgrown.action == "rebuild" and "auto measured IVF1024,SQ8,RFlat for 100,000" in (
        outgrown.reason
    )
    small = info("Flat", "flat", (1_000, 1_000), selection=False)  # N·D < 2^19: Flat
    assert plan_refresh(small, stats(1_000, 1_000, 1_000)).action == "update"
    assert "auto chooses by measurement" in plan_refresh(small, stats(1_000, 1_000, 4_000)).reason
    unchanged = plan_refresh(measured, stats(60_000, 40_000))
    assert unchanged.action == "unchanged"


def test_other_settings_or_an_old_index_rebuild(lat) -> None:
    path, _ = lat
    build_index(path, kind="flat", progress=False)
    assert update_index(path).info.update["action"] == "unchanged"
    changed = update_index(path, kind="ivf")
    assert changed.info.update["action"] == "rebuild" and changed.info.kind == "ivf"
    assert "kind='ivf' asked for" in changed.info.update["reason"]
    info_path = index_dir(path) / "index.json"
    data = json.loads(info_path.read_text())
    data["parts"] = []  # as an index.json written before parts were recorded
    info_path.write_text(json.dumps(data))
    append(path, clustered(100, seed=2), "c")
    old = update_index(path)
    assert (
        old.info.update["action"] == "rebuild" and "records no parts" in (old.info.update["reason"])
    )


def test_a_failed_update_leaves_the_old_index_valid(lat, monkeypatch) -> None:
    import embedkit.index.persist as persist

    path, _ = lat
    build_index(path, kind="ivf", progress=False)
    before = set(p.name for p in index_dir(path).iterdir())
    append(path, clustered(500, seed=2), "c")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persist, "write_recall_set", crash)  # after index and ids were written
    with pytest.raises(OSError, match="disk full"):
        update_index(path)
    monkeypatch.undo()
    with pytest.raises(InputError, match="stale: 1 part added"):  # the old one, whole
        load_index(path)
    updated = update_index(path)
    assert updated.ntotal == 12_500
    names = {p.name for p in index_dir(path).iterdir()}
    assert names == {"index.json", *updated.info.files}  # no leftovers
    assert not names & before - {"index.json"}


def test_neighbors_update_true_brings_the_index_up_to_date(lat) -> None:
    path, _ = lat
    build_index(path, kind="ivf", progress=False)
    new = clustered(300, seed=11)
    ids = append(path, new, "c")
    frame = neighbors(path, vectors=new[:50], k=1, update=True)
    assert (frame["id"].to_numpy() == np.array(ids[:50])).mean() >= 0.95
    assert load_index(path).ntotal == 12_300  # saved
    assert read_info(path).update["action"] == "update"


def test_cli_index_says_what_it_did(lat) -> None:
    from embedkit.cli import cli

    path, _ = lat
    runner = CliRunner()
    first = runner.invoke(cli, ["index", str(path), "--kind", "ivf", "--no-gpu"])
    assert first.exit_code == 0, first.output
    assert "action     built: no index yet" in first.output
    again = runner.invoke(cli, ["index", str(path)])
    assert "action     up to date: the index holds all 12,000 rows" in again.output
    append(path, clustered(600, seed=3), "c")
    grown = runner.invoke(cli, ["index", str(path)])
    assert grown.exit_code == 0, grown.output
    assert "action     updated in place: 1 part added (600 rows)" in grown.output
    assert "ntotal     12,600" in grown.output
    forced = runner.invoke(cli, ["index", str(path), "--rebuild"])
    assert "action     rebuilt: a rebuild was asked for" in forced.output


# -- the pieces ----------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,SQ8", "IVF16,SQ8,RFlat",
                                     "IVF16,PQ8x4fs"])  # fmt: skip
def test_remove_rows_keeps_rows_numbered_in_order(factory: str) -> None:
    x = prepare_vectors(clustered(3000, seed=3), "l2", "x")
    index = faiss.index_factory(DIM, factory)
    index.train(x)
    index.add(x)
    assert can_remove(index)
    removed = np.arange(0, 3000, 7)
    remove_rows(index, removed)
    kept = np.delete(np.arange(3000), removed)
    assert index.ntotal == len(kept)
    if "IVF" in factory:
        faiss.extract_index_ivf(index).nprobe = 16
    if "RFlat" in factory:
        faiss.downcast_index(index).k_factor = 16
    found = index.search(x[kept[:300]], 1)[1][:, 0]
    assert (found == np.arange(300)).mean() >= (1.0 if "PQ" not in factory else 0.6)
    fresh = prepare_vectors(clustered(5, seed=8), "l2", "x")
    index.add(fresh)  # new rows go after the kept ones
    assert index.ntotal == len(kept) + 5
    if "PQ" not in factory:  # 4-bit codes: the nearest is not always the row itself
        found = index.search(fresh, 1)[1][:, 0].tolist()
        assert found == list(range(len(kept), len(kept) + 5))


def test_hnsw_cannot_remove_rows() -> None:
    assert not can_remove(faiss.index_factory(DIM, "HNSW32"))


def test_a_recall_fall_is_retuned_or_reported(lat) -> None:
    path, _ = lat
    built = build_index(path, kind="ivf", progress=False)
    loaded = load_index(path)
    from embedkit.index.persist import read_recall

    recall = read_recall(index_dir(path), loaded.info)
    strict = dataclasses.replace(loaded.info, target_recall=0.995, recall_lower=0.995)
    raised = recheck_kept(loaded.index, recall, strict)
    assert raised.retuned and raised.params["nprobe"] > built.info.params["nprobe"]
    assert raised.holds and raised.lower >= 0.995
    impossible = dataclasses.replace(loaded.info, target_recall=1.01, recall_lower=1.01)
    assert not recheck_kept(loaded.index, recall, impossible).holds


@pytest.mark.parametrize("appended", [False, True])
def test_embedkit_index_mends_a_damaged_index(lat, appended: bool) -> None:
    path, _ = lat
    build_index(path, kind="flat", progress=False)
    target = index_dir(path) / "index.faiss"
    target.write_bytes(target.read_bytes()[:1000])  # truncated
    if appended:
        append(path, clustered(50, seed=4), "c")
    fixed = update_index(path)
    assert fixed.info.update["action"] == "rebuild"
    assert "cannot be read (the index file" in fixed.info.update["reason"]
    assert load_index(path).ntotal == 12_000 + (50 if appended else 0)
