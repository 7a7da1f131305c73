"""The report's curation sections: near-duplicates (planted exact copies), outliers and
possible label mistakes (a planted relabelled row), and the empty cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

import embedkit
from embedkit.images.corpus import make_shapes
from embedkit.store.dataset import open_latents
from embedkit.viz.curation_sections import (
    MAX_OUTLIERS,
    near_duplicates_section,
    source_thumbnails,
)
from embedkit.viz.html import Report
from embedkit.viz.report import build_report

N = 150
COPIED = (3, 40)  # rows whose image is copied byte for byte (the copies: ids N + j)
RELABELLED = 7  # the row given another colour


def planted_corpus(root: Path) -> Path:
    """The shapes corpus plus exact copies of ``COPIED`` and row ``RELABELLED`` given
    another colour; the path of its table."""
    labels = pd.read_parquet(make_shapes(root, n=N, size=32, seed=0))
    copies = []
    for j, row in enumerate(COPIED):
        path = Path("copies") / f"{j}.png"
        (root / path).parent.mkdir(exist_ok=True)
        shutil.copyfile(root / labels.path[row], root / path)
        copies.append({**labels.iloc[row].to_dict(), "id": N + j, "path": str(path)})
    table = pd.concat([labels, pd.DataFrame(copies)], ignore_index=True)
    own = table.loc[RELABELLED, "color"]
    table.loc[RELABELLED, "color"] = next(c for c in table["color"].unique() if c != own)
    table.to_parquet(root / "planted.parquet")
    return root / "planted.parquet"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curation_report")
    table = planted_corpus(root / "corpus")
    embedkit.embed(table, "pixels", root / "lat", num_workers=0, progress=False)
    return root / "lat"


def section(page: str, heading: str) -> str:
    """The part of a rendered report under ``heading``, up to the next heading."""
    return page.split(f"<h2>{heading}</h2>")[1].split("<h2>")[0]


def test_report_has_the_curation_sections(planted, tmp_path):
    report, stats = build_report(planted, tmp_path, label="color")
    page = report.render()
    for heading in ("Near-duplicates", "Outliers", "Possible label mistakes"):
        assert f"<h2>{heading}</h2>" in page
    assert page.index("<h2>Clusters</h2>") < page.index("<h2>Near-duplicates</h2>")
    duplicates = section(page, "Near-duplicates")
    assert "Threshold auto:" in duplicates and "groups" in duplicates
    for j, row in enumerate(COPIED):  # each copy is listed after its original
        assert f"<td>{row}</td>\n      <td>{N + j}</td>" in duplicates
    mistakes = section(page, "Possible label mistakes")
    assert (
        f"<td>{RELABELLED}</td>" in mistakes and "neighbours mostly share their color" in mistakes
    )
    assert stats["near_duplicate_groups"] >= len(COPIED) and stats["label_issues"] >= 1
    assert section(page, "Outliers").count("<tr>") == MAX_OUTLIERS  # body rows
    for name in ("near_duplicates.png", "outliers.png", "label_issues.png"):
        assert (tmp_path / name).is_file()


def test_clean_unlabelled_set_with_missing_sources(tmp_path):
    """No near-duplicates, no label section, and grey cells for the moved images."""
    make_shapes(tmp_path / "corpus", n=30, size=32, seed=1)
    embedkit.embed(
        tmp_path / "corpus" / "images", "pixels", tmp_path / "lat", num_workers=0, progress=False
    )
    (tmp_path / "corpus").rename(tmp_path / "moved")
    report, stats = build_report(tmp_path / "lat", tmp_path / "report")
    page = report.render()
    assert "No near-duplicates found." in section(page, "Near-duplicates")
    assert stats["near_duplicate_groups"] == 0 and len(stats["outliers"]) == MAX_OUTLIERS
    assert "Possible label mistakes" not in page and "label_issues" not in stats
    ds = open_latents(tmp_path / "lat")
    assert source_thumbnails(ds, [*ds.ids()[:2].tolist(), "no such id"]) == [None] * 3


def test_a_section_that_cannot_run_leaves_a_note(planted, tmp_path):
    ds = open_latents(planted).filter(id=["0", "1"])
    report = Report("t")
    assert near_duplicates_section(report, ds, tmp_path) is None
    assert "Not computed:" in report.render()
