"""Joining latents with labels: carried columns, Parquet/CSV/DataFrame tables, and the report."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedkit import BackboneInfo, InputError, write_latents
from embedkit.algebra.labels import JoinReport, labeled

DIM = 4
IDS = [f"{i:03d}" for i in range(8)]  # "000".."007": leading zeros must survive a CSV
COLOR = ["red", "blue", None, "red", "green", None, "blue", "red"]
FLAG = [True, False, True, None, False, True, False, True]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, np.ndarray]:
    vecs = np.random.default_rng(0).standard_normal((len(IDS), DIM)).astype(np.float32)
    path = write_latents(
        tmp_path / "lat",
        IDS,
        vecs,
        BackboneInfo("toy", DIM),
        columns={"color": COLOR, "flag": FLAG},
    )
    return path, vecs


def labels_frame() -> pd.DataFrame:
    """Labels for 5 of the 8 latents (shuffled), plus 2 rows whose ids have no latent."""
    return pd.DataFrame(
        {
            "id": ["006", "zz1", "001", "003", "000", "zz2", "004"],
            "mood": ["sad", "x", "happy", "sad", "happy", "y", "happy"],
            "score": [6.0, 0.0, 1.0, 3.0, 0.0, 9.0, 4.0],
        }
    )


EXPECTED_MOOD = {"000": "happy", "001": "happy", "003": "sad", "004": "happy", "006": "sad"}


def test_carried_column_drops_and_counts_missing(data):
    path, vecs = data
    with pytest.warns(UserWarning, match="6 of 8 latents labeled; 2 latents had no label"):
        out = labeled(path, ["color"])
    assert out.report == JoinReport(8, 6, 2, 0)
    kept = [i for i, c in zip(IDS, COLOR, strict=True) if c is not None]
    assert kept == ["000", "001", "003", "004", "006", "007"]
    assert out.ids.tolist() == kept
    assert out.labels["color"].tolist() == [c for c in COLOR if c is not None]
    rows = [IDS.index(i) for i in kept]
    np.testing.assert_array_equal(out.vectors, vecs[rows])
    assert out.vectors.dtype == np.float32
    assert list(out.labels.index) == list(range(6))


def test_several_columns_need_all_labels(data):
    path, _ = data
    with pytest.warns(UserWarning):
        out = labeled(path, ["color", "flag"])
    # color missing at 2, 5; flag missing at 3
    assert out.ids.tolist() == ["000", "001", "004", "006", "007"]
    assert out.report == JoinReport(8, 5, 3, 0)


def test_fully_labeled_emits_no_warning(tmp_path):
    path = write_latents(
        tmp_path / "lat", ["a", "b"], np.eye(2, 3, dtype=np.float32), BackboneInfo("toy", 3),
        columns={"k": ["x", "y"]},
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = labeled(path, ["k"])
    assert out.report == JoinReport(2, 2, 0, 0)
    assert str(out.report) == (
        "2 of 2 latents labeled; 0 latents had no label row, 0 label rows had no latent"
    )


def check_joined(out, vecs):
    assert out.report == JoinReport(8, 5, 3, 2)
    # storage order of the latents, not the order of the labels table
    assert out.ids.tolist() == sorted(EXPECTED_MOOD)
    assert dict(zip(out.ids, out.labels["mood"], strict=True)) == EXPECTED_MOOD
    np.testing.assert_array_equal(out.labels["score"], [0.0, 1.0, 3.0, 4.0, 6.0])
    np.testing.assert_array_equal(out.vectors, vecs[[0, 1, 3, 4, 6]])


@pytest.mark.parametrize("kind", ["dataframe", "parquet", "csv"])
def test_join_table_counts_both_sides(data, tmp_path, kind):
    path, vecs = data
    frame = labels_frame()
    if kind == "dataframe":
        table = frame
    elif kind == "parquet":
        table = tmp_path / "labels.parquet"
        frame.to_parquet(table)
    else:
        table = tmp_path / "labels.csv"
        frame.to_csv(table, index=False)
    with pytest.warns(UserWarning, match="3 latents had no label row, 2 label rows had no latent"):
        out = labeled(path, ["mood", "score"], labels=table)
    check_joined(out, vecs)


def test_join_on_custom_id_column(data, tmp_path):
    path, vecs = data
    table = tmp_path / "labels.csv"
    labels_frame().rename(columns={"id": "key"}).to_csv(table, index=False)
    with pytest.warns(UserWarning):
        out = labeled(path, ["mood", "score"], labels=table, id_column="key")
    check_joined(out, vecs)
    with pytest.raises(InputError) as exc:
        labeled(path, ["mood"], labels=table)  # default id column "id" is absent
    assert "no column 'id'" in one_line(exc)
    assert "key, mood, score" in str(exc.value)


def test_csv_ids_that_look_like_numbers_keep_leading_zeros(data, tmp_path):
    path, vecs = data
    table = tmp_path / "labels.csv"
    table.write_text("id,mood\n007,a\n000,b\n003,c\n")  # read naively: 7, 0, 3 -> no match
    with pytest.warns(UserWarning):
        out = labeled(path, ["mood"], labels=table)
    assert out.report == JoinReport(8, 3, 5, 0)
    assert dict(zip(out.ids, out.labels["mood"], strict=True)) == {
        "000": "b",
        "003": "c",
        "007": "a",
    }
    np.testing.assert_array_equal(out.vectors, vecs[[0, 3, 7]])


def test_integer_ids_in_table_match_string_ids(tmp_path):
    """The built-in corpus writes int64 ids; latents store them as strings."""
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = write_latents(tmp_path / "lat", [0, 1, 2, 3], vecs, BackboneInfo("toy", 3))
    table = pd.DataFrame({"id": np.array([3, 2, 1, 0], dtype=np.int64), "y": list("dcba")})
    table.to_parquet(tmp_path / "l.parquet")
    out = labeled(path, ["y"], labels=tmp_path / "l.parquet")
    assert out.labels["y"].tolist() == list("abcd")
    assert out.report == JoinReport(4, 4, 0, 0)


def test_label_row_with_missing_value_is_excluded(data):
    path, vecs = data
    frame = pd.DataFrame({"id": IDS, "mood": ["a", None, "b", "c", np.nan, "d", "e", "f"]})
    with pytest.warns(UserWarning, match="6 of 8 latents labeled; 2 latents had no label"):
        out = labeled(path, ["mood"], labels=frame)
    assert out.ids.tolist() == ["000", "002", "003", "005", "006", "007"]
    assert out.labels["mood"].tolist() == list("abcdef")
    np.testing.assert_array_equal(out.vectors, vecs[[0, 2, 3, 5, 6, 7]])


def test_dropna_false_keeps_rows_but_still_counts_unlabeled(data):
    path, vecs = data
    with pytest.warns(UserWarning, match="5 of 8 latents labeled; 3 latents had no label row"):
        out = labeled(path, ["mood"], labels=labels_frame(), dropna=False)
    assert out.report == JoinReport(8, 5, 3, 2)
    assert len(out.ids) == 8
    np.testing.assert_array_equal(out.vectors, vecs)
    assert out.labels["mood"].isna().sum() == 3


def test_missing_carried_column_is_one_line_naming_it(data):
    path, _ = data
    with pytest.raises(InputError) as exc:
        labeled(path, ["colour"])
    message = one_line(exc)
    assert "'colour'" in message
    assert "id, source, color, flag" in message
    assert "labels=" in message


def test_missing_column_in_table_lists_table_columns(data):
    path, _ = data
    with pytest.raises(InputError) as exc:
        labeled(path, ["mode"], labels=labels_frame())
    message = one_line(exc)
    assert "no column 'mode'" in message
    assert "id, mood, score" in message


def test_duplicate_ids_in_table_are_refused(data):
    path, _ = data
    frame = pd.DataFrame({"id": ["000", "001", "000"], "mood": ["a", "b", "c"]})
    with pytest.raises(InputError) as exc:
        labeled(path, ["mood"], labels=frame)
    assert "repeats id '000'" in one_line(exc)


def test_no_label_at_all_is_an_error(data):
    path, _ = data
    frame = pd.DataFrame({"id": ["nope"], "mood": ["a"]})
    with pytest.warns(UserWarning), pytest.raises(InputError, match="has a label in mood"):
        labeled(path, ["mood"], labels=frame)


def test_missing_and_unreadable_label_files(data, tmp_path):
    path, _ = data
    with pytest.raises(InputError, match="does not exist"):
        labeled(path, ["mood"], labels=tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError) as exc:
        labeled(path, ["mood"], labels=bad)
    assert "cannot read labels table" in one_line(exc)


# -- finding the column to join on ----------------------------------------------------
N_IMAGES = 10
MOODS = [f"m{i}" for i in range(N_IMAGES)]


def embedded_folder(tmp_path: Path, ids_under: str = "") -> tuple[Path, Path, np.ndarray]:
    """Latents as ``embed corpus/`` writes them (ids relative to the folder embedded, absolute
    ``source``), and corpus/labels.parquet as ``make_shapes`` writes it (``id`` 0..n-1, ``path``
    relative to its folder). Returns (latents, labels table, vectors)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    paths = [f"images/{i:05d}.png" for i in range(N_IMAGES)]
    vecs = np.random.default_rng(1).standard_normal((N_IMAGES, DIM)).astype(np.float32)
    ids = [p.removeprefix(ids_under) for p in paths]
    lat = write_latents(
        tmp_path / "lat", ids, vecs, BackboneInfo("toy", DIM),
        sources=[str(corpus / p) for p in paths],
    )  # fmt: skip
    table = pd.DataFrame({"id": range(N_IMAGES), "path": paths, "mood": MOODS})
    table.iloc[::-1].to_parquet(corpus / "labels.parquet")  # another order than the latents
    return lat, corpus / "labels.parquet", vecs


def test_join_column_is_found_when_id_matches_nothing(tmp_path):
    lat, table, vecs = embedded_folder(tmp_path)
    note = "joined on labels column 'path' (10 of 10 latents); 'id' matched none"
    with pytest.warns(UserWarning, match=re.escape(note)):
        out = labeled(lat, ["mood"], labels=table)
    assert out.report == JoinReport(10, 10, 0, 0)
    assert (out.report.on, out.report.detected) == ("path", note)
    assert str(out.report).startswith(note + "; 10 of 10 latents labeled")
    assert out.labels["mood"].tolist() == MOODS
    np.testing.assert_array_equal(out.vectors, vecs)


def test_small_id_match_gives_way_to_a_column_matching_far_more(tmp_path):
    lat, _, _ = embedded_folder(tmp_path)
    frame = pd.DataFrame(
        {
            "id": ["images/00003.png"] + [f"other{i}" for i in range(1, N_IMAGES)],
            "path": [f"images/{i:05d}.png" for i in range(N_IMAGES)],
            "mood": MOODS,
        }
    )
    with pytest.warns(UserWarning, match="'id' matched 1 of 10"):
        out = labeled(lat, ["mood"], labels=frame)
    assert out.report.on == "path" and out.labels["mood"].tolist() == MOODS


def test_join_through_sources_resolved_against_the_labels_folder(tmp_path):
    """Embedding corpus/images/ gives ids like 00001.png; labels say images/00001.png."""
    lat, table, vecs = embedded_folder(tmp_path, ids_under="images/")
    with pytest.warns(UserWarning, match="joined on labels column 'path' as paths") as record:
        out = labeled(lat, ["mood"], labels=table)
    assert "source" in str(record[0].message) and "10 of 10 latents" in str(record[0].message)
    assert out.report == JoinReport(10, 10, 0, 0) and out.report.on == "path"
    assert out.labels["mood"].tolist() == MOODS
    np.testing.assert_array_equal(out.vectors, vecs)
    # chosen explicitly, the column is joined the same way, and that is said too
    with pytest.warns(UserWarning, match="as paths"):
        out = labeled(lat, ["mood"], labels=table, id_column="path")
    assert out.labels["mood"].tolist() == MOODS


def test_explicit_id_column_matching_nothing_names_the_one_that_does(tmp_path):
    lat, table, _ = embedded_folder(tmp_path)
    with pytest.raises(InputError) as exc:
        labeled(lat, ["mood"], labels=table, id_column="id")
    message = one_line(exc)
    assert "'id' matches none of the 10 latent ids" in message
    assert "'path' matches 10" in message and "pass --id-column path" in message


def test_absent_id_column_suggests_the_matching_one(data):
    path, _ = data
    frame = labels_frame().rename(columns={"id": "key"})
    with pytest.raises(InputError) as exc:
        labeled(path, ["mood"], labels=frame)
    message = one_line(exc)
    assert "no column 'id'" in message and "pass --id-column key" in message


def test_full_id_match_is_not_second_guessed(data):
    path, _ = data
    frame = pd.DataFrame({"id": IDS, "alt": IDS, "mood": list("abcdefgh")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = labeled(path, ["mood"], labels=frame)
    assert (out.report.on, out.report.detected) == ("id", "")


def test_nothing_matching_shows_what_the_ids_look_like(data):
    path, _ = data
    frame = pd.DataFrame({"id": ["nope", "nada"], "mood": ["a", "b"]})
    with pytest.warns(UserWarning), pytest.raises(InputError) as exc:
        labeled(path, ["mood"], labels=frame)
    message = one_line(exc)
    assert "has a label in mood" in message
    assert "'000'" in message and "'nope'" in message
