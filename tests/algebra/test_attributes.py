"""Latent arithmetic: centroids, attribute vectors and their scores, z + a*v, lerp/slerp."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedkit import BackboneInfo, InputError, open_latents, write_latents
from embedkit.algebra import (
    AttributeVector,
    analogy,
    apply_vector,
    attribute_vector,
    attribute_vectors,
    auc,
    centroids,
    cohens_d,
    interpolate,
    lerp,
    slerp,
    vectors_for_ids,
)
from embedkit.algebra.labels import JoinReport

DIM = 16
TOY = BackboneInfo("toy", DIM)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def synthetic(n: int, seed: int = 0, shift: float = 2.0, random_labels: bool = False):
    """Gaussian latents; ``flag`` rows are shifted by ``shift`` along one unit direction."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(DIM, np.float32)
    direction[3] = 1.0
    flag = rng.random(n) < 0.4
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    if not random_labels:
        x += shift * flag[:, None] * direction
    color = rng.choice(["red", "green", "blue"], size=n)
    level = rng.integers(0, 4, size=n)
    return x, flag, color, level


@pytest.fixture
def lat(tmp_path: Path):
    x, flag, color, level = synthetic(600)
    ids = [f"r{i}" for i in range(len(x))]
    columns = {"flag": flag, "color": color, "level": level, "w": level * 0.5}
    path = write_latents(tmp_path / "lat", ids, x, TOY, columns=columns)
    return path, x, pd.DataFrame({"id": ids, **columns})


# -- centroids -----------------------------------------------------------------
def test_centroids_equal_numpy_means(lat):
    path, x, frame = lat
    out = centroids(path, by="color")
    assert out["label"].tolist() == ["blue", "green", "red"]
    for _, row in out.iterrows():
        mask = (frame["color"] == row["label"]).to_numpy()
        assert row["n"] == mask.sum()
        np.testing.assert_allclose(row["centroid"], x[mask].astype(np.float64).mean(0), atol=1e-5)
        assert row["centroid"].dtype == np.float32
    assert out["n"].sum() == len(x)


def test_centroids_normalize_averages_unit_vectors(lat):
    path, x, frame = lat
    out = centroids(path, by="flag", normalize=True)
    assert out["label"].tolist() == [False, True]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for _, row in out.iterrows():
        mask = (frame["flag"] == row["label"]).to_numpy()
        np.testing.assert_allclose(row["centroid"], unit[mask].mean(0), atol=1e-5)
        assert np.linalg.norm(row["centroid"]) < 1.0  # a mean of unit vectors, not re-normalized


def test_centroids_from_joined_labels(lat, tmp_path):
    path, x, frame = lat
    table = frame[["id", "level"]].rename(columns={"level": "bucket"}).iloc[::2]
    table.to_csv(tmp_path / "l.csv", index=False)
    with pytest.warns(UserWarning, match="300 of 600 latents labeled"):
        out = centroids(path, by="bucket", labels=tmp_path / "l.csv")
    assert out["label"].tolist() == [0, 1, 2, 3]
    even = np.arange(len(x)) % 2 == 0
    for _, row in out.iterrows():
        mask = even & (frame["level"] == row["label"]).to_numpy()
        assert row["n"] == mask.sum()
        np.testing.assert_allclose(row["centroid"], x[mask].mean(0), atol=1e-5)


# -- scores --------------------------------------------------------------------
def brute_auc(pos, neg) -> float:
    diff = np.asarray(pos, float)[:, None] - np.asarray(neg, float)[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@pytest.mark.parametrize("seed", range(4))
def test_auc_equals_pairwise_count_with_ties_half(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 6, size=37).astype(float)  # many ties
    neg = rng.integers(0, 5, size=23).astype(float)
    assert auc(pos, neg) == pytest.approx(brute_auc(pos, neg), abs=1e-12)


def test_auc_extremes():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert np.isnan(auc(np.array([]), np.array([1.0])))


def test_cohens_d_matches_manual_formula():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1.0, 2.0, 50), rng.normal(0.0, 1.0, 30)
    n1, n2 = len(pos), len(neg)
    s1, s2 = pos.var(ddof=1), neg.var(ddof=1)
    pooled = np.sqrt(((n1 - 1) * s1 + (n2 - 1) * s2) / (n1 + n2 - 2))
    assert cohens_d(pos, neg) == pytest.approx((pos.mean() - neg.mean()) / pooled, rel=1e-12)
    assert cohens_d(neg, pos) == pytest.approx(-cohens_d(pos, neg), rel=1e-12)
    assert np.isnan(cohens_d(pos, neg[:1]))


# -- attribute vectors -----------------------------------------------------------
def test_attribute_vector_is_difference_of_means(lat):
    path, x, frame = lat
    flag = frame["flag"].to_numpy()
    v = attribute_vector(path, "flag")
    expected = x[flag].astype(np.float64).mean(0) - x[~flag].astype(np.float64).mean(0)
    np.testing.assert_allclose(v.vector, expected, atol=1e-5)
    assert v.vector.dtype == np.float32
    assert (v.name, v.column, v.positive, v.negative) == ("flag", "flag", "True", "rest")
    assert (v.n_positive, v.n_negative) == (flag.sum(), (~flag).sum())
    assert v.norm == pytest.approx(np.linalg.norm(expected), rel=1e-5)
    assert v.backbone == TOY
    # the shift is along axis 3: the vector points there
    assert np.argmax(np.abs(v.vector)) == 3 and v.vector[3] == pytest.approx(2.0, abs=0.3)
    assert v.auc > 0.9
    assert 1.5 < v.cohens_d < 2.6
    stats = v.stats()
    assert stats["n_positive"] == flag.sum() and stats["auc"] == v.auc
    assert stats["norm"] == round(v.norm, 6)


def test_swapped_sides_flip_the_vector_not_the_scores(lat):
    path, _, _ = lat
    v = attribute_vector(path, "flag")
    swapped = attribute_vector(path, "flag", positive=False, negative=True)
    assert swapped.name == "flag=False" and swapped.negative == "True"
    np.testing.assert_allclose(swapped.vector, -v.vector, atol=1e-6)
    # scored on the same held-out rows, projected on -v: the same separation
    assert swapped.auc == pytest.approx(v.auc, abs=1e-9)
    assert swapped.cohens_d == pytest.approx(v.cohens_d, rel=1e-4)
    # a vector that points the wrong way scores below chance
    x, flag = open_latents(path).to_numpy(), open_latents(path).to_pandas()["flag"].to_numpy()
    assert auc(x[flag] @ swapped.vector, x[~flag] @ swapped.vector) < 0.1
    assert cohens_d(x[flag] @ swapped.vector, x[~flag] @ swapped.vector) < -1.5


def test_random_labels_score_near_chance(tmp_path):
    x, flag, _, _ = synthetic(2000, seed=5, random_labels=True)
    path = write_latents(tmp_path / "lat", range(len(x)), x, TOY, columns={"flag": flag})
    v = attribute_vector(path, "flag")
    assert 0.4 < v.auc < 0.6
    assert abs(v.cohens_d) < 0.4


def test_scores_are_held_out_not_in_sample(tmp_path):
    """With more dims than rows, in-sample scores are near perfect even for noise."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 400)).astype(np.float32)
    flag = np.arange(120) % 2 == 0
    path = write_latents(
        tmp_path / "lat", range(120), x, BackboneInfo("wide", 400), columns={"flag": flag}
    )
    in_sample = attribute_vector(path, "flag", holdout=0.0)
    held_out = attribute_vector(path, "flag", holdout=0.5)
    assert in_sample.auc > 0.95
    assert held_out.auc < 0.75
    np.testing.assert_array_equal(in_sample.vector, held_out.vector)  # vector uses every row


def test_default_negative_is_all_other_values(lat):
    path, x, frame = lat
    red = (frame["color"] == "red").to_numpy()
    v = attribute_vector(path, "color", positive="red")
    assert v.name == "color=red"
    assert (v.n_positive, v.n_negative) == (red.sum(), (~red).sum())
    np.testing.assert_allclose(v.vector, x[red].mean(0) - x[~red].mean(0), atol=1e-5)


def test_explicit_negative_values(lat):
    path, x, frame = lat
    color = frame["color"].to_numpy()
    v = attribute_vector(path, "color", positive="red", negative="blue")
    assert (v.n_positive, v.n_negative) == ((color == "red").sum(), (color == "blue").sum())
    assert v.negative == "blue"
    expected = x[color == "red"].mean(0) - x[color == "blue"].mean(0)
    np.testing.assert_allclose(v.vector, expected, atol=1e-5)

    v = attribute_vector(path, "level", positive=[2, 3], negative=[0])
    level = frame["level"].to_numpy()
    pos, neg = level >= 2, level == 0
    assert (v.n_positive, v.n_negative) == (pos.sum(), neg.sum())
    np.testing.assert_allclose(v.vector, x[pos].mean(0) - x[neg].mean(0), atol=1e-5)


def test_list_of_positives_against_the_rest(lat):
    path, x, frame = lat
    pos = frame["color"].isin(["red", "green"]).to_numpy()
    v = attribute_vector(path, "color", positive=["red", "green"], name="warm")
    assert v.name == "warm"
    assert (v.n_positive, v.n_negative) == (pos.sum(), (~pos).sum())
    np.testing.assert_allclose(v.vector, x[pos].mean(0) - x[~pos].mean(0), atol=1e-5)


def test_negative_never_overlaps_positive(lat):
    path, _, frame = lat
    red = (frame["color"] == "red").to_numpy()
    v = attribute_vector(path, "color", positive="red", negative=["red", "blue"])
    blue = (frame["color"] == "blue").to_numpy()
    assert (v.n_positive, v.n_negative) == (red.sum(), blue.sum())


@pytest.mark.parametrize(
    ("column", "typed", "expected"),
    [
        ("flag", "true", True),
        ("flag", "TRUE", True),
        ("flag", "false", False),
        ("level", "3", 3),
        ("level", "3.0", 3),
        ("w", "1.5", 1.5),
    ],
)
def test_values_typed_on_the_command_line_are_coerced(lat, column, typed, expected):
    path, x, frame = lat
    values = frame[column].to_numpy()
    v = attribute_vector(path, column, positive=typed)
    pos = values == expected
    assert v.n_positive == pos.sum() > 0
    np.testing.assert_allclose(v.vector, x[pos].mean(0) - x[~pos].mean(0), atol=1e-5)


def test_typed_bool_on_column_with_missing_values(tmp_path):
    """A bool column with nulls reads as object dtype; "true" must still mean True."""
    x, flag, _, _ = synthetic(50)
    values = [bool(f) if i % 10 else None for i, f in enumerate(flag)]
    path = write_latents(tmp_path / "lat", range(50), x, TOY, columns={"flag": values})
    with pytest.warns(UserWarning, match="45 of 50 latents labeled"):
        typed = attribute_vector(path, "flag", positive="true", negative="false")
    with pytest.warns(UserWarning):
        plain = attribute_vector(path, "flag")
    assert typed.n_positive == plain.n_positive == sum(v is True for v in values)
    assert typed.n_negative == sum(v is False for v in values)
    np.testing.assert_allclose(typed.vector, plain.vector, atol=1e-6)


def test_typed_bool_on_joined_labels_with_unmatched_ids(lat):
    path, x, frame = lat
    table = frame[["id", "flag"]].iloc[:500]
    with pytest.warns(UserWarning):
        v = attribute_vector(path, "flag", positive="true", labels=table)
    flag = frame["flag"].to_numpy()[:500]
    assert (v.n_positive, v.n_negative) == (flag.sum(), (~flag).sum())
    expected = x[:500][flag].mean(0) - x[:500][~flag].mean(0)
    np.testing.assert_allclose(v.vector, expected, atol=1e-5)


def test_side_without_rows_is_an_error(lat):
    path, _, _ = lat
    with pytest.raises(InputError) as exc:
        attribute_vector(path, "color", positive="purple")
    message = one_line(exc)
    assert "0 rows equal 'purple'" in message and "red" in message
    with pytest.raises(InputError, match="0 rows are negatives"):
        attribute_vector(path, "color", positive="red", negative="purple")
    with pytest.raises(InputError, match="no column 'nope'"):
        attribute_vector(path, "nope")


def test_attribute_vectors_bool_and_categorical(lat):
    path, x, frame = lat
    found, report = attribute_vectors(path, ["flag", "color"])
    assert [v.name for v in found] == ["flag", "color=blue", "color=green", "color=red"]
    assert report == JoinReport(600, 600, 0, 0)
    single = attribute_vector(path, "flag")
    np.testing.assert_array_equal(found[0].vector, single.vector)
    assert found[0].auc == single.auc
    green = (frame["color"] == "green").to_numpy()
    np.testing.assert_allclose(found[2].vector, x[green].mean(0) - x[~green].mean(0), atol=1e-5)
    assert found[2].positive == "green" and found[2].negative == "rest"
    assert all(v.n_positive + v.n_negative == 600 for v in found)


def test_attribute_vectors_drop_missing_per_column(lat):
    path, x, frame = lat
    table = frame[["id", "color"]].copy()
    table.loc[:99, "color"] = None  # 100 rows without colour
    table = table.iloc[:550]  # 50 latents without a label row
    table["shape"] = ["square" if i % 3 else "disc" for i in range(550)]
    with pytest.warns(UserWarning, match="550 of 600 latents labeled; 50 latents had no label"):
        found, report = attribute_vectors(path, ["color", "shape"], labels=table)
    assert report == JoinReport(600, 550, 50, 0)
    by_name = {v.name: v for v in found}
    assert sorted(by_name) == [
        "color=blue",
        "color=green",
        "color=red",
        "shape=disc",
        "shape=square",
    ]
    assert by_name["color=red"].n_positive + by_name["color=red"].n_negative == 450
    assert by_name["shape=disc"].n_positive + by_name["shape=disc"].n_negative == 550
    rows = np.arange(100, 550)
    red = (frame["color"].to_numpy() == "red")[rows]
    expected = x[rows][red].mean(0) - x[rows][~red].mean(0)
    np.testing.assert_allclose(by_name["color=red"].vector, expected, atol=1e-5)


# -- applying vectors --------------------------------------------------------------
def make_vector(vector: np.ndarray, backbone: BackboneInfo = TOY) -> AttributeVector:
    return AttributeVector("v", vector, backbone, "c", "True", "rest", 1, 1, 0.5, 0.0)


def test_apply_vector_shapes_and_values():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, DIM)).astype(np.float32)
    v = rng.standard_normal(DIM).astype(np.float32)
    out = apply_vector(z, v, 0.5)
    assert out.shape == (5, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(out, z + 0.5 * v, atol=1e-6)
    alphas = [-1.0, 0.0, 2.0]
    out = apply_vector(z, make_vector(v), alphas, backbone=TOY)
    assert out.shape == (5, 3, DIM)
    for j, a in enumerate(alphas):
        np.testing.assert_allclose(out[:, j], z + a * v, atol=1e-6)
    assert apply_vector(z[0], v).shape == (1, DIM)  # one vector becomes [1, D]


def test_apply_vector_refuses_other_backbones():
    z = np.zeros((2, DIM), np.float32)
    for other in (
        BackboneInfo("other", DIM),
        BackboneInfo("toy", DIM + 1),
        BackboneInfo("toy", DIM, config={"pretrained": True}),  # same name and dim, other weights
    ):
        with pytest.raises(InputError) as exc:
            apply_vector(z, make_vector(np.ones(DIM, np.float32), other), 1.0, backbone=TOY)
        assert "cannot mix" in one_line(exc)
    # the device a backbone ran on does not make it another backbone
    on_gpu = BackboneInfo("toy", DIM, config={"device": "cuda"})
    same = apply_vector(z, make_vector(np.ones(DIM, np.float32), on_gpu), 1.0, backbone=TOY)
    np.testing.assert_array_equal(same, np.ones((2, DIM)))
    # without backbone=, no check is possible
    assert apply_vector(z, make_vector(np.ones(DIM, np.float32), BackboneInfo("x", DIM))).shape


def test_apply_vector_dim_mismatch():
    with pytest.raises(InputError) as exc:
        apply_vector(np.zeros((2, DIM)), np.ones(DIM - 1), [1.0])
    assert f"dim {DIM}" in one_line(exc) and f"dim {DIM - 1}" in str(exc.value)


def test_analogy_is_a_minus_b_plus_c():
    rng = np.random.default_rng(2)
    a, b, c = rng.standard_normal((3, 4, DIM))
    out = analogy(a, b, c)
    assert out.dtype == np.float32 and out.shape == (4, DIM)
    np.testing.assert_allclose(out, a - b + c, atol=1e-5)
    np.testing.assert_allclose(analogy(a[0], b[0], c), a[0] - b[0] + c, atol=1e-5)  # broadcasts


# -- interpolation ------------------------------------------------------------------
def test_lerp_midpoint_and_endpoints():
    z1, z2 = np.arange(DIM, dtype=np.float32), -np.ones(DIM, np.float32)
    out = interpolate(z1, z2, steps=3, method="lerp")
    assert out.shape == (3, DIM)
    np.testing.assert_allclose(out[0], z1)
    np.testing.assert_allclose(out[1], (z1 + z2) / 2, atol=1e-6)
    np.testing.assert_allclose(out[2], z2)
    np.testing.assert_allclose(lerp(z1, z2, np.array([0.25])), [0.75 * z1 + 0.25 * z2])


def test_slerp_endpoints_norms_and_arc():
    rng = np.random.default_rng(4)
    z1, z2 = rng.standard_normal(DIM) * 3, rng.standard_normal(DIM) * 0.5
    out = interpolate(z1, z2, steps=9)  # slerp is the default
    assert out.shape == (9, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], z1, atol=1e-5)
    np.testing.assert_allclose(out[-1], z2, atol=1e-5)
    t = np.linspace(0, 1, 9)
    n1, n2 = np.linalg.norm(z1), np.linalg.norm(z2)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), (1 - t) * n1 + t * n2, rtol=1e-5)
    # every point lies in the plane of z1, z2 and on the arc: its angle grows linearly in t
    u1, u2 = z1 / n1, z2 / n2
    omega = np.arccos(u1 @ u2)
    units = out / np.linalg.norm(out, axis=1, keepdims=True)
    np.testing.assert_allclose(np.arccos(np.clip(units @ u1, -1, 1)), t * omega, atol=1e-3)
    np.testing.assert_allclose(np.arccos(np.clip(units @ u2, -1, 1)), (1 - t) * omega, atol=1e-3)


def test_slerp_unit_vectors_stay_on_sphere():
    z1 = np.zeros(DIM)
    z1[0] = 1.0
    z2 = np.zeros(DIM)
    z2[1] = 1.0
    out = slerp(z1, z2, np.linspace(0, 1, 5))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[2, :2], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    angles = np.arctan2(out[:, 1], out[:, 0])
    np.testing.assert_allclose(angles, np.linspace(0, np.pi / 2, 5), atol=1e-6)


@pytest.mark.parametrize("scale", [2.0, -1.0, 0.0])
def test_slerp_parallel_or_zero_falls_back_to_lerp(scale):
    z1 = np.arange(1, DIM + 1, dtype=np.float32)
    z2 = scale * z1
    t = np.linspace(0, 1, 5)
    out = slerp(z1, z2, t)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, lerp(z1, z2, t), atol=1e-5)


def test_interpolate_rejects_bad_arguments():
    z = np.ones(DIM)
    with pytest.raises(InputError, match="at least 2"):
        interpolate(z, z, steps=1)
    with pytest.raises(InputError) as exc:
        interpolate(z, -z, method="cubic")
    assert "'cubic'" in one_line(exc) and "lerp or slerp" in str(exc.value)
    with pytest.raises(InputError, match="shapes"):
        interpolate(z, np.ones(DIM + 1))


def test_vectors_for_ids_in_given_order(lat):
    path, x, _ = lat
    out = vectors_for_ids(path, ["r7", "r2", "r7", "r599"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x[[7, 2, 7, 599]])
    np.testing.assert_array_equal(vectors_for_ids(open_latents(path), []), np.zeros((0, DIM)))
    with pytest.raises(InputError) as exc:
        vectors_for_ids(path, ["r1", "missing", "also-missing"])
    assert "'missing'" in one_line(exc)


def test_numeric_ids_are_looked_up_as_strings(tmp_path):
    x = np.eye(3, DIM, dtype=np.float32)
    path = write_latents(tmp_path / "lat", [10, 20, 30], x, TOY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(vectors_for_ids(path, [30, 10]), x[[2, 0]])


# -- held-out scores: a stratified split, or in-sample and said so ---------------------
def rare_flag(tmp_path: Path, n_positive: int, n: int = 200, dim: int = 400):
    """Noise latents (more dims than rows) with ``n_positive`` rows flagged at random:
    in-sample scores are near perfect, held-out ones near chance."""
    rng = np.random.default_rng(n_positive)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    flag = np.zeros(n, bool)
    flag[rng.choice(n, n_positive, replace=False)] = True
    return write_latents(
        tmp_path / "lat", range(n), x, BackboneInfo("wide", dim), columns={"flag": flag}
    )


@pytest.fixture
def scored_sizes(monkeypatch) -> list[tuple[int, int]]:
    """(positives, negatives) each score was computed on."""
    from embedkit.algebra import attributes as module

    sizes: list[tuple[int, int]] = []

    def spy(positive: np.ndarray, negative: np.ndarray) -> float:
        sizes.append((len(positive), len(negative)))
        return auc(positive, negative)

    monkeypatch.setattr(module, "auc", spy)
    return sizes


@pytest.mark.parametrize("seed", range(6))
def test_rare_positives_are_still_held_out(tmp_path, scored_sizes, seed):
    """3 positives in 200 rows: a random 20 % split often holds none of them out, and the
    score silently became in-sample (AUC near 1 on pure noise)."""
    v = attribute_vector(rare_flag(tmp_path, 3), "flag", holdout=0.2, seed=seed)
    assert v.in_sample is False and v.stats()["in_sample"] is False
    assert scored_sizes == [(1, 39)]  # round(3 * 0.2) -> at least 1; round(197 * 0.2) = 39
    assert v.n_positive == 3 and v.n_negative == 197


def test_split_holds_out_the_same_fraction_of_each_class(lat, scored_sizes):
    path, _, frame = lat
    n_pos = int(frame["flag"].sum())
    v = attribute_vector(path, "flag", holdout=0.25)
    assert not v.in_sample
    assert scored_sizes == [(round(n_pos * 0.25), round((600 - n_pos) * 0.25))]


def test_one_positive_is_scored_in_sample_and_says_so(tmp_path, scored_sizes):
    v = attribute_vector(rare_flag(tmp_path, 1), "flag", holdout=0.2)
    assert v.in_sample is True and v.stats()["in_sample"] is True
    assert scored_sizes == [(1, 199)]  # every row: nothing could be held out
    assert v.auc == 1.0  # in-sample on noise: perfect, which is why it is flagged


def test_holdout_zero_is_in_sample(tmp_path):
    v = attribute_vector(rare_flag(tmp_path, 50), "flag", holdout=0.0)
    assert v.in_sample is True


def test_attribute_vectors_flag_in_sample_per_vector(tmp_path):
    x, _, _, _ = synthetic(100)
    kind = ["common"] * 99 + ["unique"]
    path = write_latents(tmp_path / "lat", range(100), x, TOY, columns={"kind": kind})
    found, _ = attribute_vectors(path, ["kind"])
    assert {v.name: v.in_sample for v in found} == {"kind=common": True, "kind=unique": True}
    kind = ["a"] * 50 + ["b"] * 48 + ["c"] * 2
    path = write_latents(tmp_path / "lat2", range(100), x, TOY, columns={"kind": kind})
    found, _ = attribute_vectors(path, ["kind"])
    assert [v.in_sample for v in found] == [False, False, False]


def test_scores_on_rare_positives_are_honest(tmp_path):
    """Pure noise with 3 positives: held-out AUCs average near chance, not near 1."""
    path = rare_flag(tmp_path, 3)
    scores = [attribute_vector(path, "flag", seed=seed).auc for seed in range(8)]
    assert np.mean(scores) < 0.8, scores
