"""``probe()`` on latents whose contents are known: what is written into the vectors is
read back, what is not stays at the baseline; blocks, alignment on id, the held-out
split, missing labels and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import embedkit
from embedkit import BackboneInfo, write_latents
from embedkit.probes.knn import knn_predict
from embedkit.probes.measure import TABLE_COLUMNS, score

N = 400
STAGES = (("stage1", 4), ("stage2", 4))


def known_latents(seed: int = 0) -> tuple[np.ndarray, dict]:
    """``[N, 8]`` vectors: dims 0-3 encode ``lab`` and ``level``, dims 4-7 ``other``;
    ``noise`` and ``junk`` are not encoded at all."""
    rng = np.random.default_rng(seed)
    lab = rng.choice(["a", "b", "c"], N)
    other = rng.choice(["x", "y"], N)
    level = rng.uniform(0, 1, N)
    x = rng.standard_normal((N, 8)).astype(np.float32) * 0.3
    x[:, :3] += 3 * (lab[:, None] == np.array(["a", "b", "c"]))
    x[:, 3] = 4 * level
    x[:, 4:] += 3 * (other == "y")[:, None] * np.array([1, -1, 1, -1])
    columns = {
        "lab": lab,
        "other": other,
        "level": level,
        "noise": rng.choice(["p", "q", "r"], N),
        "junk": rng.normal(size=N),
    }
    return x, columns


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    x, columns = known_latents()
    info = BackboneInfo("toy", 8, segments=STAGES)
    path = tmp_path_factory.mktemp("probe") / "staged"
    return write_latents(path, [f"r{i}" for i in range(N)], x, info, columns)


@pytest.fixture(scope="module")
def table(staged):
    return embedkit.probe(staged, ["lab", "other", "level", "noise", "junk"])


def cell(table: pd.DataFrame, column: str, block: str = "all", dataset: str | None = None):
    rows = table[(table["column"] == column) & (table["block"] == block)]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_the_table_has_a_row_per_column_and_block(table):
    assert list(table.columns) == TABLE_COLUMNS
    assert table["column"].tolist() == [
        c for c in ["lab", "other", "level", "noise", "junk"] for _ in range(3)
    ]
    assert table["block"].tolist() == ["stage1", "stage2", "all"] * 5
    assert table["dim"].tolist() == [4, 4, 8] * 5
    kinds = table.drop_duplicates("column").set_index("column")[["kind", "measure"]]
    assert kinds.loc["lab"].tolist() == ["categorical", "accuracy"]
    assert kinds.loc["level"].tolist() == ["numeric", "R²"]
    assert table.attrs["k"] == 10 and table.attrs["metric"] == {"staged": "cosine"}


def test_encoded_labels_are_read_back_and_the_rest_stay_at_the_baseline(table):
    lab = cell(table, "lab")
    assert lab["knn"] >= 0.97 and lab["linear"] >= 0.97 and lab["baseline"] < 0.45
    level = cell(table, "level")
    assert level["linear"] >= 0.95 and level["knn"] >= 0.6
    assert abs(level["baseline"]) < 0.05  # the training mean scores about 0
    noise = cell(table, "noise")
    assert noise["knn"] < noise["baseline"] + 0.12
    assert noise["linear"] < noise["baseline"] + 0.12
    junk = cell(table, "junk")
    assert junk["knn"] < 0.1 and junk["linear"] < 0.1


def test_each_stage_knows_what_was_written_into_it(table):
    assert cell(table, "lab", "stage1")["knn"] >= 0.97
    assert cell(table, "other", "stage2")["knn"] >= 0.97
    for column, blind in (("lab", "stage2"), ("other", "stage1")):
        row = cell(table, column, blind)
        assert row["knn"] < row["baseline"] + 0.12, row
        assert row["linear"] < row["baseline"] + 0.12, row
    assert cell(table, "other")["linear"] >= 0.97  # the whole vector knows both


def test_the_split_is_stratified_and_held_out(table):
    lab = cell(table, "lab")
    assert lab["n_train"] + lab["n_test"] == N
    assert lab["n_test"] == pytest.approx(N * 0.25, abs=2)  # rounded per class
    assert (table["n_test"] >= 98).all()


def test_datasets_are_joined_on_id_whatever_their_row_order(staged, tmp_path):
    x, columns = known_latents()
    order = np.random.default_rng(1).permutation(N)
    shuffled = write_latents(
        tmp_path / "shuffled",
        [f"r{i}" for i in order],
        x[order],
        BackboneInfo("toy", 8),
        {k: v[order] for k, v in columns.items()},
    )
    both = embedkit.probe([staged, shuffled], ["lab", "junk"])
    for column in ("lab", "junk"):
        mine, theirs = cell(both, column, dataset="staged"), cell(both, column, dataset="shuffled")
        assert mine[["baseline", "knn", "linear", "n_test"]].tolist() == pytest.approx(
            theirs[["baseline", "knn", "linear", "n_test"]].tolist()
        )


def test_missing_labels_are_dropped_for_that_column_only(tmp_path):
    x, columns = known_latents()
    lab = columns["lab"].astype(object)
    lab[:40] = None
    path = write_latents(
        tmp_path / "lat",
        [str(i) for i in range(N)],
        x,
        BackboneInfo("toy", 8),
        {"lab": lab, "level": columns["level"]},
    )
    with pytest.warns(UserWarning, match="'lab': 40 of 400 rows have no label; left out"):
        found = embedkit.probe(path, ["lab", "level"])
    assert cell(found, "lab")[["n_train", "n_test"]].sum() == 360
    assert cell(found, "level")[["n_train", "n_test"]].sum() == N


def test_a_labels_table_is_joined_on_id(staged, tmp_path):
    _, columns = known_latents()
    table = pd.DataFrame({"id": [f"r{i}" for i in range(N)], "truth": columns["lab"]})
    table.iloc[::-1].to_csv(tmp_path / "labels.csv", index=False)
    found = embedkit.probe(staged, ["truth"], labels=tmp_path / "labels.csv")
    assert cell(found, "truth")["knn"] >= 0.97


def test_numbers_can_be_probed_as_classes(tmp_path):
    x, columns = known_latents()
    digit = pd.Series(columns["lab"]).map({"a": 0, "b": 1, "c": 2}).to_numpy()
    path = write_latents(
        tmp_path / "d", [str(i) for i in range(N)], x, BackboneInfo("toy", 8), {"digit": digit}
    )
    assert cell(embedkit.probe(path, ["digit"]), "digit")["measure"] == "R²"
    as_classes = cell(embedkit.probe(path, ["digit"], categorical=["digit"]), "digit")
    assert as_classes["kind"] == "categorical" and as_classes["knn"] >= 0.97


def test_without_columns_every_carried_label_is_probed(staged):
    found = embedkit.probe(staged, k=5, seed=3)
    assert found["column"].unique().tolist() == ["lab", "other", "level", "noise", "junk"]
    assert found.attrs["k"] == 5 and found.attrs["seed"] == 3


def test_rare_classes_are_left_out_with_a_warning(tmp_path):
    x, columns = known_latents()
    lab = columns["lab"].copy()
    lab[:3] = "rare"
    path = write_latents(
        tmp_path / "r", [str(i) for i in range(N)], x, BackboneInfo("toy", 8), {"lab": lab}
    )
    with pytest.warns(UserWarning, match="left out 3 rows of 1 classes with fewer than 5"):
        found = embedkit.probe(path, ["lab"])
    assert cell(found, "lab")[["n_train", "n_test"]].sum() == N - 3


def test_knn_votes_break_ties_by_the_nearer_neighbours():
    train_values = np.array([0, 1, 1, 2])
    neighbours = np.array(
        [
            [0, 1],
            [1, 0],
            [
                0,
                1,
            ][:2],
            [3, 0],
        ]
    )
    assert knn_predict(neighbours, train_values, True).tolist() == [0, 1, 0, 2]
    assert knn_predict(np.array([[0, 1, 2]]), train_values, True).tolist() == [1]  # majority
    assert knn_predict(np.array([[0, 3]]), np.array([1.0, 0, 0, 3.0]), False).tolist() == [2.0]


def test_scores_are_accuracy_and_r2():
    assert score(np.array([1, 2, 2, 0]), np.array([1, 2, 0, 0]), True) == 0.75
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    assert score(truth, truth, False) == 1.0
    assert score(truth, np.full(4, 2.5), False) == 0.0
    assert score(truth, np.array([2.0, 2.0, 3.0, 3.0]), False) == pytest.approx(1 - 2 / 5)
