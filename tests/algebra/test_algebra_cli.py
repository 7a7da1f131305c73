"""The ``attributes``, ``cluster`` and ``centroids`` commands: output, saved files, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from embedkit import BackboneInfo, write_latents
from embedkit.algebra import attribute_vector, attribute_vectors, centroids
from embedkit.algebra.vector_table import load_vectors
from embedkit.cli import get_cli, main

DIM = 8
N = 300


@pytest.fixture
def lat(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    flag = rng.random(N) < 0.5
    lab = rng.choice(["a", "b", "c"], size=N)
    x[:, 0] += 4 * flag
    x[:, 1] += 3 * (lab == "b")
    return write_latents(
        tmp_path / "lat", range(N), x, BackboneInfo("toy", DIM), columns={"flag": flag, "lab": lab}
    )


def invoke(*args: str) -> str:
    result = CliRunner().invoke(get_cli(), [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def stats_rows(output: str) -> dict[str, list[str]]:
    lines = output.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["name", "column"])
    header = lines[start].split()
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith(("saved ", "* ")):
            break
        cells = line.split()
        assert len(cells) == len(header), line
        rows[cells[0]] = cells
    return rows


def test_attributes_prints_stats_and_saves(lat, tmp_path):
    out_path = tmp_path / "v.parquet"
    output = invoke("attributes", lat, "-c", "flag", "-c", "lab", "-o", out_path)
    lines = output.strip().splitlines()
    assert lines[0] == (
        f"{N} of {N} latents labeled; 0 latents had no label row, 0 label rows had no latent"
    )
    rows = stats_rows(output)
    assert list(rows) == ["flag", "lab=a", "lab=b", "lab=c"]
    assert lines[-1] == f"saved 4 vectors -> {out_path}"

    expected, _ = attribute_vectors(lat, ["flag", "lab"])
    for v in expected:
        cells = rows[v.name]
        assert int(cells[4]) == v.n_positive and int(cells[5]) == v.n_negative
        assert float(cells[6]) == pytest.approx(v.norm, abs=1e-3)
        assert float(cells[7]) == pytest.approx(v.auc, abs=1e-3)
    assert float(rows["flag"][7]) > 0.95 and float(rows["lab=b"][7]) > 0.95

    loaded = load_vectors(out_path)
    assert list(loaded) == ["flag", "lab=a", "lab=b", "lab=c"]
    for v in expected:
        np.testing.assert_array_equal(loaded[v.name].vector, v.vector)
        assert loaded[v.name].backbone == BackboneInfo("toy", DIM)


def test_attributes_with_positive_and_negative(lat):
    output = invoke("attributes", lat, "-c", "flag", "--positive", "true")
    assert "latents labeled" not in output  # the single-vector path prints no join report
    (row,) = stats_rows(output).values()
    v = attribute_vector(lat, "flag", positive=True)
    assert int(row[4]) == v.n_positive and int(row[5]) == v.n_negative
    assert float(row[6]) == pytest.approx(v.norm, abs=1e-3)

    output = invoke("attributes", lat, "-c", "lab", "--positive", "b", "--negative", "a")
    (row,) = stats_rows(output).values()
    v = attribute_vector(lat, "lab", positive="b", negative="a")
    assert row[:4] == ["lab=b", "lab", "b", "a"]
    assert (int(row[4]), int(row[5])) == (v.n_positive, v.n_negative)


def test_attributes_with_joined_labels(lat, tmp_path):
    table = pd.DataFrame({"key": [str(i) for i in range(0, N, 2)] + ["ghost"]})
    table["even_half"] = [i < N // 2 for i in range(0, N, 2)] + [True]
    table.to_csv(tmp_path / "l.csv", index=False)
    with pytest.warns(UserWarning, match="150 latents had no label row"):
        output = invoke(
            "attributes", lat, "-c", "even_half", "--labels", tmp_path / "l.csv",
            "--id-column", "key",
        )  # fmt: skip
    assert output.splitlines()[0] == (
        f"{N // 2} of {N} latents labeled; {N // 2} latents had no label row, "
        "1 label rows had no latent"
    )
    (row,) = stats_rows(output).values()
    assert row[0] == "even_half" and (int(row[4]), int(row[5])) == (75, 75)


def test_positive_needs_exactly_one_column(lat, capsys):
    code, _, err = run_main(capsys, "attributes", lat, "-c", "flag", "-c", "lab", "--positive", "x")
    assert code == 2
    assert "--positive works with exactly one --column" in err


def test_cluster_writes_the_table(lat):
    output = invoke("cluster", lat, "-k", "5", "--name", "grp", "--seed", "1")
    first, second = output.strip().splitlines()
    match = re.fullmatch(r"5 clusters, sizes \[([\d, ]+)\], inertia ([\d.e+]+)", first)
    assert match, first
    sizes = [int(s) for s in match.group(1).split(",")]
    assert len(sizes) == 5 and sum(sizes) == N
    path = lat / "clusters" / "grp.parquet"
    assert second == f"assignments -> {path}"
    table = pd.read_parquet(path)
    assert table.columns.tolist() == ["id", "grp", "distance"]
    assert np.bincount(table["grp"], minlength=5).tolist() == sizes
    assert (lat / "clusters" / "grp_centroids.parquet").is_file()


def test_centroids_by_label_and_by_cluster(lat, tmp_path):
    output = invoke("centroids", lat, "--by", "lab")
    lines = output.strip().splitlines()
    assert lines[0].split() == ["label", "n", "norm"]
    expected = centroids(lat, by="lab")
    for line, (_, row) in zip(lines[1:], expected.iterrows(), strict=True):
        label, n, norm = line.split()
        assert label == row["label"] and int(n) == row["n"]
        assert float(norm) == pytest.approx(np.linalg.norm(row["centroid"]), abs=1e-5)

    invoke("cluster", lat, "-k", "4")
    out = tmp_path / "c.parquet"
    output = invoke(
        "centroids", lat, "--by", "cluster", "--labels", lat / "clusters" / "cluster.parquet",
        "--normalize", "-o", out,
    )  # fmt: skip
    assert output.strip().splitlines()[-1] == f"centroids -> {out}"
    saved = pd.read_parquet(out)
    assert saved["label"].tolist() == [0, 1, 2, 3] and saved["n"].sum() == N
    expected = centroids(
        lat, by="cluster", labels=lat / "clusters" / "cluster.parquet", normalize=True
    )
    np.testing.assert_allclose(np.stack(saved["centroid"]), np.stack(expected["centroid"]))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["attributes", "{lat}", "-c", "nope"], "no column 'nope'"),
        (["attributes", "{lat}", "-c", "lab", "--positive", "zzz"], "0 rows equal 'zzz'"),
        (["attributes", "{tmp}/missing", "-c", "lab"], "does not exist"),
        (["cluster", "{lat}", "-k", "0"], "k=0 must be between 1"),
        (["cluster", "{lat}", "-k", str(N + 1)], f"number of latents ({N})"),
        (["centroids", "{lat}", "--by", "nope"], "no column 'nope'"),
        (["centroids", "{lat}", "--by", "lab", "--labels", "{tmp}/nope.csv"], "does not exist"),
    ],
)
def test_errors_are_one_line(lat, tmp_path, capsys, args, needle):
    args = [a.format(lat=lat, tmp=tmp_path) for a in args]
    code, out, err = run_main(capsys, *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err and out == ""


# -- scores made in-sample are marked --------------------------------------------------
def test_in_sample_scores_are_marked(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32)
    rare = np.arange(50) == 7  # one positive: nothing can be held out
    path = write_latents(
        tmp_path / "lat", range(50), x, BackboneInfo("toy", DIM),
        columns={"rare": rare, "half": np.arange(50) % 2 == 0},
    )  # fmt: skip
    output = invoke("attributes", path, "-c", "rare", "-c", "half")
    rows = stats_rows(output)
    header = next(line.split() for line in output.splitlines() if line.split()[:1] == ["name"])
    auc_at = header.index("auc")
    assert rows["rare"][auc_at].endswith("*") and not rows["half"][auc_at].endswith("*")
    assert float(rows["rare"][auc_at].rstrip("*")) == pytest.approx(
        attribute_vector(path, "rare").auc, abs=1e-3
    )
    footnotes = [line for line in output.splitlines() if line.startswith("* ")]
    assert len(footnotes) == 1 and "in-sample" in footnotes[0]
    assert "in-sample" not in invoke("attributes", path, "-c", "half")


# -- the new user's story: corpus, embed the folder, attributes with its labels ----------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """``embedkit corpus shapes shapes/`` then ``embedkit embed shapes/ -b pixels``:
    latent ids are paths relative to shapes/, labels.parquet has ``id`` 0..59 and ``path``."""
    from embedkit import embed
    from embedkit.images import make_shapes

    root = tmp_path_factory.mktemp("story")
    labels = make_shapes(root / "shapes", n=60, size=16)
    embed(root / "shapes", "pixels", root / "latents", progress=False)
    return root / "latents", labels


JOINED_ON_PATH = "joined on labels column 'path' (60 of 60 latents); 'id' matched none"


def assert_clean_stderr(err: str) -> None:
    assert "Warning" not in err and ".py:" not in err and "Traceback" not in err, err
    assert all(line.startswith(("warning: ", "error: ")) for line in err.splitlines()), err


def test_attributes_find_the_column_matching_the_latent_ids(shapes, capsys):
    latents, labels = shapes
    main(["attributes", str(latents), "--labels", str(labels), "--column", "filled"])
    out, err = capsys.readouterr()
    assert_clean_stderr(err)
    assert (out + err).count(JOINED_ON_PATH) == 1  # said once, not as warning and report
    assert (out + err).count("60 of 60 latents labeled") == 1
    (row,) = stats_rows(out).values()
    frame = pd.read_parquet(labels)
    assert row[0] == "filled" and int(row[4]) == int(frame["filled"].sum())


def test_explicit_id_column_that_matches_nothing_says_which_would(shapes, capsys):
    latents, labels = shapes
    code, out, err = run_main(
        capsys, "attributes", latents, "--labels", labels, "-c", "filled", "--id-column", "id"
    )
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "pass --id-column path" in line


def test_centroids_find_the_column_too(shapes, capsys):
    latents, labels = shapes
    main(["centroids", str(latents), "--by", "shape", "--labels", str(labels)])
    out, err = capsys.readouterr()
    assert_clean_stderr(err)
    assert err.count(JOINED_ON_PATH) == 1
    assert out.split()[:3] == ["label", "n", "norm"]
    main(["centroids", str(latents), "--by", "shape", "--labels", str(labels), "--id-column",
          "path"])  # fmt: skip
    out, err = capsys.readouterr()
    assert err == "" and out.split()[:3] == ["label", "n", "norm"]


def test_warnings_reach_the_user_as_one_line_each(lat, tmp_path, capsys):
    table = pd.DataFrame({"id": [str(i) for i in range(0, N, 2)]})
    table["even_half"] = [i < N // 2 for i in range(0, N, 2)]
    table.to_csv(tmp_path / "l.csv", index=False)
    report = f"{N // 2} of {N} latents labeled; {N // 2} latents had no label row"
    main(["attributes", str(lat), "-c", "even_half", "--labels", str(tmp_path / "l.csv")])
    out, err = capsys.readouterr()
    assert_clean_stderr(err)
    assert err.startswith(f"warning: {report}") and (out + err).count(report) == 1
    main(["attributes", str(lat), "-c", "even_half", "--labels", str(tmp_path / "l.csv"),
          "--positive", "true"])  # fmt: skip
    out, err = capsys.readouterr()
    assert_clean_stderr(err)
    assert err.count(report) == 1
