"""Bad input to ``probe()`` gets one line naming the column, table or datasets and what
to do: unknown columns, a labels table without ids, datasets without common ids, label
columns that cannot be probed, bad settings."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import embedkit
from embedkit import BackboneInfo, InputError, write_latents

N = 60


def latents(path, ids, seed=0, **columns):
    x = np.random.default_rng(seed).standard_normal((len(ids), 4)).astype(np.float32)
    return write_latents(path, ids, x, BackboneInfo("toy", 4), columns or None)


@pytest.fixture
def lat(tmp_path):
    rng = np.random.default_rng(0)
    return latents(
        tmp_path / "lat",
        [str(i) for i in range(N)],
        lab=rng.choice(["a", "b"], N),
        when=pd.date_range("2020-01-01", periods=N).to_numpy(),
        same=np.full(N, "x"),
    )


def one_line(excinfo, pattern: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    return message


def test_an_unknown_column_names_the_columns_there_are(lat):
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(lat, ["lab", "colour"])
    one_line(
        excinfo,
        r"have no column 'colour' \(columns: id, source, lab, when, same\); pass labels=TABLE",
    )


def test_a_labels_table_without_the_column_or_ids(lat, tmp_path):
    pd.DataFrame({"id": [str(i) for i in range(N)], "lab": "a"}).to_parquet(tmp_path / "l.parquet")
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(lat, ["shape"], labels=tmp_path / "l.parquet")
    one_line(excinfo, r"labels table has no column 'shape'; columns are id, lab")
    pd.DataFrame({"name": ["q"] * N, "shape": "a"}).to_csv(tmp_path / "noid.csv", index=False)
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(lat, ["shape"], labels=tmp_path / "noid.csv")
    one_line(excinfo, r"labels table has no column 'id'; columns are name, shape")
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(lat, labels=tmp_path / "l.parquet")
    one_line(excinfo, r"name the columns of the labels table to probe \(--column")


def test_datasets_that_share_too_few_ids_are_refused(lat, tmp_path):
    other = latents(
        tmp_path / "other", [f"img{i}" for i in range(N)], lab=np.array(["a", "b"] * 30)
    )
    with pytest.raises(InputError) as excinfo:
        embedkit.probe([lat, other], ["lab"])
    one_line(
        excinfo,
        r"the latent datasets share 0 ids \(.*lat 60 \(ids like '0'\), .*other 60 \(ids like "
        r"'img0'\)\); probe datasets embedded from the same images",
    )


def test_datasets_sharing_most_ids_are_probed_on_those_with_a_warning(lat, tmp_path):
    ids = [str(i) for i in range(10, N + 10)]  # 50 shared, 10 more each
    other = latents(tmp_path / "other", ids, seed=1)
    with pytest.warns(UserWarning, match=r"probing the 50 ids all datasets share; left out: 10 of"):
        table = embedkit.probe([lat, other], ["lab"])
    assert (table["n_train"] + table["n_test"]).tolist() == [50, 50]


@pytest.mark.parametrize(
    ("columns", "pattern"),
    [
        (["when"], r"label column 'when' holds datetime64 values; a probe needs classes"),
        (["same"], r"label column 'same' holds fewer than 2 classes \(\['x'\]\)"),
        ([], r"no label column to probe: name at least one"),
    ],
)
def test_columns_that_cannot_be_probed(lat, columns, pattern):
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(lat, columns)
    one_line(excinfo, pattern)


def test_latents_without_label_columns(tmp_path):
    bare = latents(tmp_path / "bare", [str(i) for i in range(N)])
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(bare)
    one_line(
        excinfo, r"carry no label column to probe \(columns: id, source\); pass --labels TABLE"
    )


def test_too_few_labeled_rows(tmp_path):
    lab = np.array(["a", "b"] * 30, dtype=object)
    lab[12:] = None
    few = latents(tmp_path / "few", [str(i) for i in range(N)], lab=lab)
    with pytest.raises(InputError) as excinfo, pytest.warns(UserWarning):
        embedkit.probe(few, ["lab"])
    one_line(excinfo, r"label column 'lab' has 12 usable labeled rows .* at least 20")


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"k": 0}, r"k must be a positive integer \(got 0\)"),
        ({"test_size": 1.0}, r"test_size must lie between 0 and 1 \(got 1.0\)"),
        ({"metric": "dot"}, r"metric 'dot' is not supported; use cosine or l2"),
        ({"categorical": ["nope"]}, r"categorical column 'nope' is not among the probed"),
    ],
)
def test_bad_settings(lat, options, pattern):
    with pytest.raises(InputError) as excinfo:
        embedkit.probe(lat, ["lab"], **options)
    one_line(excinfo, pattern)


def test_repeated_ids_are_refused(lat, tmp_path):
    twice = latents(tmp_path / "twice", [str(i) for i in range(30)])
    latents(twice, [str(i) for i in range(30)], seed=1)  # appended again: a damaged dataset
    with pytest.raises(InputError) as excinfo:
        embedkit.probe([lat, twice], ["lab"])
    one_line(excinfo, r"twice holds id '0' more than once; ids must be unique")


def test_one_column_may_be_named_as_a_string(lat):
    assert embedkit.probe(lat, "lab")["column"].tolist() == ["lab"]
