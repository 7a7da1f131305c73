"""Saving and loading attribute vectors: exact round trips, backbone info, and bad files."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit import BackboneInfo, InputError, open_latents, write_latents
from embedkit.algebra import AttributeVector, apply_vector, attribute_vectors
from embedkit.algebra.vector_table import load_vectors, save_vectors

DIM = 6
TIMM = BackboneInfo("timm/toy", DIM, config={"pretrained": True, "layers": [2, 3], "weights": None})


def vector(name: str, seed: int, backbone: BackboneInfo = TIMM, **kw) -> AttributeVector:
    values = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    fields = {
        "column": "c",
        "positive": "True",
        "negative": "rest",
        "n_positive": 10 + seed,
        "n_negative": 20 + seed,
        "auc": 0.5 + seed / 10,
        "cohens_d": -1.25 * seed,
    }
    fields.update(kw)
    return AttributeVector(name, values, backbone, **fields)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def test_round_trip_is_exact(tmp_path):
    saved = [
        vector("smiling", 1),
        vector("color=red", 2, column="color", positive="red", negative="blue"),
        vector("tiny", 3, auc=math.nan, cohens_d=math.nan),
    ]
    path = save_vectors(saved, tmp_path / "sub" / "v.parquet")
    assert path == tmp_path / "sub" / "v.parquet"
    assert not list(path.parent.glob(".*.tmp"))
    loaded = load_vectors(path)
    assert list(loaded) == ["smiling", "color=red", "tiny"]
    for before in saved:
        after = loaded[before.name]
        np.testing.assert_array_equal(after.vector, before.vector)
        assert after.vector.dtype == np.float32 and after.vector.shape == (DIM,)
        assert after.backbone == TIMM
        stats_before, stats_after = before.stats(), after.stats()
        for key in ("auc", "cohens_d"):
            a, b = stats_before.pop(key), stats_after.pop(key)
            assert (math.isnan(a) and math.isnan(b)) or a == b
        assert stats_after == stats_before
    assert loaded["color=red"].positive == "red" and loaded["color=red"].negative == "blue"
    assert loaded["smiling"].n_positive == 11 and loaded["smiling"].n_negative == 21
    assert loaded["smiling"].cohens_d == -1.25


def test_saved_table_is_plain_parquet_with_stats(tmp_path):
    path = save_vectors([vector("a", 0), vector("b", 1)], tmp_path / "v.parquet")
    table = pq.read_table(path)
    assert table.column_names == [
        "name", "column", "positive", "negative", "n_positive", "n_negative", "norm", "auc",
        "cohens_d", "in_sample", "vector",
    ]  # fmt: skip
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    norms = table.column("norm").to_pylist()
    assert norms[1] == pytest.approx(np.linalg.norm(vector("b", 1).vector), abs=1e-6)


def test_loaded_vectors_apply_to_latents_of_their_backbone(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, DIM)).astype(np.float32)
    flag = np.arange(40) % 2 == 0
    lat = write_latents(tmp_path / "lat", range(40), x, TIMM, columns={"flag": flag})
    found, _ = attribute_vectors(lat, ["flag"])
    loaded = load_vectors(save_vectors(found, tmp_path / "v.parquet"))["flag"]
    ds = open_latents(lat)
    out = apply_vector(x[:3], loaded, [1.0], backbone=ds.backbone)
    np.testing.assert_allclose(out[:, 0], x[:3] + found[0].vector, atol=1e-6)
    other = BackboneInfo("timm/toy", DIM, config={"pretrained": False, "layers": [2, 3]})
    with pytest.raises(InputError, match="cannot mix"):
        apply_vector(x[:3], loaded, [1.0], backbone=other)


@pytest.mark.parametrize(
    "other",
    [
        BackboneInfo("timm/other", DIM, config=TIMM.config),
        BackboneInfo("timm/toy", DIM, config={**TIMM.config, "pretrained": False}),
    ],
)
def test_mixing_backbones_in_one_save_is_refused(tmp_path, other):
    with pytest.raises(InputError) as exc:
        save_vectors([vector("a", 0), vector("b", 1, backbone=other)], tmp_path / "v.parquet")
    assert "'b'" in one_line(exc) and "separately" in str(exc.value)
    assert not (tmp_path / "v.parquet").exists()


def test_device_in_config_does_not_split_backbones(tmp_path):
    on_gpu = BackboneInfo(TIMM.name, DIM, config={**TIMM.config, "device": "cuda:0"})
    path = save_vectors([vector("a", 0), vector("b", 1, backbone=on_gpu)], tmp_path / "v.parquet")
    assert set(load_vectors(path)) == {"a", "b"}


def test_nothing_to_save(tmp_path):
    with pytest.raises(InputError, match="no attribute vectors"):
        save_vectors([], tmp_path / "v.parquet")


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        load_vectors(tmp_path / "nope.parquet")
    assert "does not exist" in one_line(exc) and "embedkit attributes" in str(exc.value)
    with pytest.raises(InputError, match="does not exist"):
        load_vectors(tmp_path)  # a folder is not a vectors table


def test_corrupt_file(tmp_path):
    path = tmp_path / "v.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError) as exc:
        load_vectors(path)
    assert "not a readable Parquet file" in one_line(exc)


def test_truncated_file(tmp_path):
    path = save_vectors([vector("a", 0)], tmp_path / "v.parquet")
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(InputError, match="not a readable Parquet file"):
        load_vectors(path)


def test_parquet_not_written_by_embedkit(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"name": ["a"], "vector": [[1.0, 2.0]]}), plain)
    with pytest.raises(InputError) as exc:
        load_vectors(plain)
    assert "not an embedkit vectors table" in one_line(exc)
    # a latents part has embedkit metadata, but not a vectors table's
    lat = write_latents(tmp_path / "lat", ["a"], np.ones((1, DIM), np.float32), TIMM)
    with pytest.raises(InputError, match="not an embedkit vectors table"):
        load_vectors(next(lat.glob("part-*.parquet")))


def test_in_sample_round_trips(tmp_path):
    saved = [vector("held", 1), vector("tiny", 2, in_sample=True)]
    loaded = load_vectors(save_vectors(saved, tmp_path / "v.parquet"))
    assert loaded["held"].in_sample is False and loaded["tiny"].in_sample is True
    assert loaded["tiny"].stats()["in_sample"] is True


def test_table_without_in_sample_column_loads_as_held_out(tmp_path):
    """Tables saved before ``in_sample`` existed have no such column."""
    path = save_vectors([vector("a", 0), vector("b", 1, in_sample=True)], tmp_path / "v.parquet")
    table = pq.read_table(path)
    if "in_sample" in table.column_names:
        table = table.drop_columns(["in_sample"])
    pq.write_table(table, path)  # the schema metadata (backbone) is kept
    loaded = load_vectors(path)
    assert [v.in_sample for v in loaded.values()] == [False, False]
    assert "in_sample" in loaded["a"].stats()
