"""Near-duplicates: planted copies (exact, JPEG q70, resized) are found with precision and
recall >= 0.95, by --auto and by a given threshold; a clean corpus yields almost none;
every index kind gives the same groups; union-find and the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from embedkit import BackboneInfo, open_latents, write_latents
from embedkit.cli import get_cli
from embedkit.curation import auto_threshold, near_duplicates
from embedkit.curation.groups import link_groups
from embedkit.errors import InputError
from embedkit.index.build import build_index


def pairs_of(groups: pd.DataFrame) -> set[tuple[str, str]]:
    found = set()
    for _, members in groups.groupby("group"):
        found |= {tuple(sorted(p)) for p in itertools.combinations(members["id"], 2)}
    return found


def planted_pairs(latents: Path) -> tuple[set[tuple[str, str]], pd.DataFrame]:
    table = open_latents(latents).to_pandas(embedding=False)
    copies = table[table["dup_of"] >= 0]
    truth = {
        tuple(sorted((i, str(o)))) for i, o in zip(copies["id"], copies["dup_of"], strict=True)
    }
    return truth, copies


def scores(found: set, truth: set) -> tuple[float, float]:
    hit = len(found & truth)
    return hit / max(len(found), 1), hit / len(truth)


@pytest.mark.parametrize(
    ("how", "metric"), [("auto", "cosine"), ("threshold", "cosine"), ("auto", "l2")]
)
def test_planted_copies_are_found(with_copies: Path, how: str, metric: str) -> None:
    truth, copies = planted_pairs(with_copies)
    kwargs = {"auto": True} if how == "auto" else {"threshold": 0.9995}
    groups = near_duplicates(with_copies, metric=metric, **kwargs)
    found = pairs_of(groups)
    precision, recall = scores(found, truth)
    missed = truth - found
    kinds = copies.set_index("id")["kind"]
    by_kind = {}
    for kind in ("exact", "jpeg", "resized"):
        lost = sum(kinds.get(a, kinds.get(b)) == kind for a, b in missed)
        by_kind[kind] = round(1 - lost / int((kinds == kind).sum()), 3)
    print(
        f"\n{how} ({metric}): threshold {groups.attrs['threshold']:.6f}, {len(found)} pairs found, "
        f"{len(truth)} planted: precision {precision:.3f} recall {recall:.3f}; "
        f"recall by kind {by_kind}"
    )
    assert precision >= 0.95 and recall >= 0.95
    assert by_kind["exact"] == 1.0
    assert list(groups.columns) == ["id", "group", "representative", "distance"]
    reps = groups[groups["id"] == groups["representative"]]
    assert len(reps) == groups["group"].nunique() and (reps["distance"] == 0).all()


def test_a_clean_corpus_has_almost_none(clean: Path) -> None:
    """What --auto flags in the corpus itself are pairs nobody could tell apart: the same
    shape, colour, size and fill, centres and radii within 1.5 pixels of each other."""
    groups = near_duplicates(clean, auto=True)
    table = open_latents(clean).to_pandas(embedding=False).set_index("id")
    print(f"\nclean corpus: {len(groups)} of {groups.attrs['rows']} rows in groups")
    assert len(groups) <= 0.02 * groups.attrs["rows"]
    pixels = 1.5 / 64
    for _, members in groups.groupby("group"):
        rows = table.loc[members["id"]]
        assert rows[["shape", "color", "size", "filled"]].nunique().max() == 1
        assert (rows[["x", "y", "scale"]].max() - rows[["x", "y", "scale"]].min()).max() < pixels


@pytest.mark.parametrize("kind", ["hnsw", "IVF16,Flat", "IVF16,SQ8", "IVF16,PQ16x4"])
def test_index_kinds_agree(with_copies: Path, kind: str) -> None:
    """Range search (Flat, IVF-Flat) or k-NN (HNSW, codes) then an exact check: the same
    groups as the exact search, with exact distances."""
    exact = near_duplicates(with_copies, threshold=0.9995)
    index = build_index(with_copies, kind=kind, save=False, progress=False, recall_sample=0)
    name = "efSearch" if kind == "hnsw" else "nprobe"
    faiss.ParameterSpace().set_index_parameter(index.index, name, 16 if name == "nprobe" else 256)
    k = 40 if "PQ" in kind else 10  # coarse codes rank poorly: more candidates to check
    found = near_duplicates(with_copies, threshold=0.9995, index=index, k=k)
    assert found.attrs["search"] == ("range" if kind == "IVF16,Flat" else "knn")
    assert pairs_of(found) == pairs_of(exact)
    merged = found.merge(exact, on="id")
    np.testing.assert_allclose(merged["distance_x"], merged["distance_y"], atol=1e-6)


def test_l2_metric_and_exact_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    x[100:103] = x[7]  # a group of four identical rows
    x[200] = x[9] + 1e-2  # a near copy
    lat = write_latents(tmp_path / "l", range(500), x, BackboneInfo("t", dim=16))
    build_index(lat, metric="l2", kind="flat", progress=False)
    groups = near_duplicates(lat, threshold=0.0)  # the saved index: l2, squared distance <= 0
    assert groups.attrs["metric"] == "l2"
    assert sorted(groups["id"]) == ["100", "101", "102", "7"]
    assert groups["representative"].nunique() == 1
    groups = near_duplicates(lat, auto=True)
    assert sorted(groups["id"]) == sorted(["100", "101", "102", "7", "9", "200"])
    assert groups.attrs["auto"]["rows_below"] == 6
    with pytest.raises(InputError, match="uses metric l2, not cosine"):
        near_duplicates(lat, threshold=1.0, metric="cosine")
    unindexed = write_latents(tmp_path / "c", range(500), x, BackboneInfo("t", dim=16))
    groups = near_duplicates(unindexed, threshold=1.0)  # cosine 1.0: identical directions
    assert sorted(groups["id"]) == ["100", "101", "102", "7"]


def test_auto_threshold_rules() -> None:
    rng = np.random.default_rng(0)
    natural = np.exp(rng.normal(np.log(0.01), 1.0, 10_000))  # a heavy lower tail
    chosen = auto_threshold(np.r_[natural, np.zeros(50), np.full(50, 1e-5)])
    assert 1e-5 < chosen.distance < 0.01 * np.exp(-2.5) and not chosen.capped
    assert 100 <= chosen.rows_below <= 100 + 0.003 * len(natural)  # ~0.13 % below 3 sd
    tight = auto_threshold(np.exp(rng.normal(np.log(0.5), 0.02, 10_000)))
    assert tight.capped and tight.distance == pytest.approx(tight.median / 10)
    with pytest.raises(InputError, match="exact copies"):
        auto_threshold(np.zeros(10))


def test_union_find_groups() -> None:
    a, b = np.array([0, 2, 5, 6, 3]), np.array([1, 3, 6, 7, 4])
    groups = link_groups(a, b, 9)
    assert groups.group.tolist() == [2, 2, 0, 0, 0, 1, 1, 1, 3]  # largest, then lowest node
    assert groups.representative.tolist() == [0, 0, 3, 3, 3, 6, 6, 6, 8]
    chain = np.arange(999)
    assert (link_groups(chain[::-1], chain[::-1] + 1, 1000).group == 0).all()


def test_bad_input_is_one_line(with_copies: Path) -> None:
    with pytest.raises(InputError, match="either a threshold"):
        near_duplicates(with_copies)
    with pytest.raises(InputError, match="cosine similarity: give one in"):
        near_duplicates(with_copies, threshold=2.0)
    with pytest.raises(InputError, match="too loose for near-duplicates"):
        near_duplicates(with_copies, threshold=0.0)


def test_cli_writes_the_table(with_copies: Path) -> None:
    result = CliRunner().invoke(get_cli(), ["duplicates", str(with_copies), "--auto"])
    assert result.exit_code == 0, result.output
    assert "auto: median 1-NN distance" in result.output
    saved = pd.read_parquet(with_copies / "duplicates" / "duplicates.parquet")
    assert len(saved) == len(near_duplicates(with_copies, auto=True))
    result = CliRunner().invoke(get_cli(), ["duplicates", str(with_copies)])
    assert result.exit_code != 0 and "--threshold T or --auto" in result.output


def test_groups_of_no_rows() -> None:
    from embedkit.curation.groups import link_groups

    empty = np.zeros(0, dtype=np.int64)
    found = link_groups(empty, empty, 0)
    assert len(found.group) == 0 and len(found.representative) == 0
