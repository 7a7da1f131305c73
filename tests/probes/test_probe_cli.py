"""``embedkit probe``: the table it prints and writes, its options, and one-line errors."""

from __future__ import annotations

import shlex

import pandas as pd
import pytest
from click.testing import CliRunner

import embedkit
from embedkit.cli import get_cli, main
from embedkit.probes.measure import TABLE_COLUMNS


def invoke(*args) -> str:
    result = CliRunner().invoke(get_cli(), [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_prints_and_writes_the_library_table(small_pair, tmp_path):
    px8, px4 = small_pair
    out = invoke("probe", px8, px4, "-c", "color", "-c", "x", "-o", tmp_path / "t.csv")
    lines = out.splitlines()
    assert lines[0].startswith("held out 25% of the labeled rows (stratified, seed 0); k-NN k=10")
    assert "(px8 cosine, px4 cosine)" in lines[0]
    assert lines[1].split() == TABLE_COLUMNS
    assert [line.split()[:5] for line in lines[2:6]] == [
        ["color", "categorical", "accuracy", "px8", "all"],
        ["color", "categorical", "accuracy", "px4", "all"],
        ["x", "numeric", "R²", "px8", "all"],
        ["x", "numeric", "R²", "px4", "all"],
    ]
    written = pd.read_csv(tmp_path / "t.csv")
    expected = embedkit.probe([px8, px4], ["color", "x"])
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    assert float(lines[2].split()[-2]) == pytest.approx(expected["knn"][0], abs=5e-4)


def test_options_reach_the_probe(small_pair, tmp_path):
    px8, _ = small_pair
    labels = pd.read_parquet(px8.parent / "corpus" / "labels.parquet")[["id", "shape"]]
    labels.assign(big=labels["id"] % 3).to_parquet(tmp_path / "l.parquet")
    options = shlex.split("-c big --categorical big -k 3 --test-size 0.4 --seed 2 --metric l2")
    out = invoke(
        "probe", px8, "--labels", tmp_path / "l.parquet", *options, "-o", tmp_path / "t.parquet"
    )
    assert out.startswith(
        "held out 40% of the labeled rows (stratified, seed 2); k-NN k=3 (px8 l2)"
    )
    table = pd.read_parquet(tmp_path / "t.parquet")
    assert table["kind"].tolist() == ["categorical"] and table["n_test"].tolist() == [60]


def test_errors_are_one_line(small_pair, capsys):
    px8, _ = small_pair
    with pytest.raises(SystemExit) as exc:
        main(["probe", str(px8), "-c", "colour"])
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert err.startswith("error: latents ") and "have no column 'colour'" in err
    assert len(err.strip().splitlines()) == 1


def test_the_report_probes_other_datasets_beside_its_own(small_pair, tmp_path):
    px8, px4 = small_pair
    out = invoke("report", px8, "-o", tmp_path / "report", "--compare", px4)
    page = (tmp_path / "report" / "report.html").read_text()
    section = page.split("<h2>What the latents encode</h2>")[1].split("<h2>")[0]
    assert "report.html" in out
    assert section.count("<td>px8</td>") == 7 and section.count("<td>px4</td>") == 7
