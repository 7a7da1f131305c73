"""The report's "What the latents encode" section: the probe table of the report's
dataset beside the datasets it is compared with; skipped without labels; a note when the
probe cannot run."""

from __future__ import annotations

import numpy as np

from embedkit import BackboneInfo, write_latents
from embedkit.viz.html import Report
from embedkit.viz.probe_section import SHOWN_COLUMNS, probe_section

HEADING = "<h2>What the latents encode</h2>"


def test_the_section_shows_the_table_of_every_carried_label(small_pair):
    px8, px4 = small_pair
    report = Report("t")
    table = probe_section(report, px8, compare=[px4])
    assert table["column"].unique().tolist() == [
        "shape",
        "color",
        "size",
        "scale",
        "x",
        "y",
        "filled",
    ]
    assert table["dataset"].tolist() == ["px8", "px4"] * 7
    page = report.render()
    assert HEADING in page and "on 37-40 held-out rows (trained on 110-113;" in page
    header = page.split("<thead>")[1].split("</thead>")[0]
    assert [h.split(">")[-1] for h in header.split("</th>")[:-1]] == SHOWN_COLUMNS
    colour = table[(table["column"] == "color") & (table["dataset"] == "px8")].iloc[0]
    assert colour["knn"] >= colour["baseline"] + 0.3  # raw pixels know colour
    assert f"<td>{colour['knn']:.3f}</td>" in page


def test_no_section_without_label_columns(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    bare = write_latents(tmp_path / "bare", [str(i) for i in range(50)], x, BackboneInfo("t", 4))
    report = Report("t")
    assert probe_section(report, bare) is None
    assert report.parts == []


def test_a_probe_that_cannot_run_leaves_a_note(small_pair, tmp_path):
    px8, _ = small_pair
    x = np.random.default_rng(0).standard_normal((150, 4)).astype(np.float32)
    other = write_latents(tmp_path / "o", [f"x{i}" for i in range(150)], x, BackboneInfo("t", 4))
    report = Report("t")
    assert probe_section(report, px8, compare=[other]) is None
    page = report.render()
    assert HEADING in page and "Not computed: the latent datasets share 0 ids" in page
