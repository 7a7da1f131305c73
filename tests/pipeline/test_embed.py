"""embedkit.embed end to end with the fast ``pixels`` backbone: sources, carried columns,
vectors, normalization, float16, bad inputs, resume, refusals, workers and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from embedkit_pixels import PixelsBackbone
from PIL import Image
from sample_images import expected_vectors, make_images

import embedkit
from embedkit import Backbone, BackboneInfo, EmbedResult, InputError, open_latents


def vectors_by_id(out: Path) -> dict[str, np.ndarray]:
    ds = open_latents(out)
    return dict(zip(ds.ids().tolist(), ds.to_numpy(), strict=True))


def run(source, out: Path, backbone="pixels", **kwargs) -> EmbedResult:
    kwargs = {"num_workers": 0, "progress": False, **kwargs}
    return embedkit.embed(source, backbone, out, **kwargs)


def write_bad_files(folder: Path) -> dict[str, Path]:
    """A garbage .png, a JPEG cut in half and a zero-byte .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    full = folder / "truncated.jpg"
    rgb = np.random.default_rng(7).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(full, quality=90)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    zero = folder / "zero.jpg"
    zero.write_bytes(b"")
    return {"garbage": garbage, "truncated": full, "zero": zero}


class MeanColor(Backbone):
    """A different backbone: mean RGB, dim 3."""

    def __init__(self, device: str | None = "cpu"):
        super().__init__(device=device)

    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo(name="meancolor", dim=3)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32) / 255).permute(
            2, 0, 1
        )

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(2, 3))


# -- sources end to end ------------------------------------------------------------------


def test_folder_end_to_end(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    paths = make_images(src, 9) + make_images(src / "nested" / "deeper", 3, start=9)
    out = tmp_path / "lat"

    result = run(src, out, batch_size=4)

    assert isinstance(result, EmbedResult)
    assert (result.path, result.embedded, result.skipped, result.errors) == (out, 12, 0, 0)
    assert result.seconds > 0
    assert result.summary().startswith("embedded 12 images (")
    assert result.summary().endswith(f"skipped 0 already present, 0 errors -> {out}")

    ds = open_latents(out)
    assert len(ds) == 12
    assert ds.dim == 192
    assert (ds.backbone.name, ds.backbone.config) == ("pixels", {"size": 8})
    assert (ds.normalized, ds.meta.dtype) == (False, "float32")
    ids = [p.relative_to(src).as_posix() for p in paths]
    frame = ds.to_pandas()
    assert frame.columns.tolist() == ["id", "source", "embedding"]
    assert sorted(frame["id"]) == sorted(ids)
    assert dict(zip(frame["id"], frame["source"], strict=True)) == {
        i: str(p.resolve()) for i, p in zip(ids, paths, strict=True)
    }
    got = vectors_by_id(out)
    want = expected_vectors(paths)
    for i, vector in zip(ids, want, strict=True):
        np.testing.assert_array_equal(got[i], vector)
    stacked = np.stack([got[i] for i in ids])
    assert stacked.dtype == np.float32
    assert stacked.min() >= 0.0 and stacked.max() <= 1.0
    assert len({v.tobytes() for v in stacked}) == 12  # every image gives its own vector
    assert ds.errors().empty


def test_csv_table_carries_columns(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "data" / "imgs", 6)
    table = tmp_path / "data" / "labels.csv"
    pd.DataFrame(
        {
            "id": [f"item-{i}" for i in range(6)],
            "path": [f"imgs/{p.name}" for p in paths],
            "label": ["cat", "dog", "cat", "bird", "dog", "cat"],
            "score": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5],
            "count": [10, 11, 12, 13, 14, 15],
        }
    ).to_csv(table, index=False)
    out = tmp_path / "lat"

    result = run(table, out, batch_size=4)

    assert (result.embedded, result.errors) == (6, 0)
    frame = open_latents(out).to_pandas().set_index("id")
    assert frame.columns.tolist() == ["source", "label", "score", "count", "embedding"]
    assert frame.loc["item-3", "label"] == "bird"
    assert frame.loc["item-4", "score"] == 4.5
    assert frame.loc["item-5", "count"] == 15
    assert frame["count"].dtype.kind == "i"
    assert frame.loc["item-1", "source"] == str(paths[1].resolve())
    want = expected_vectors(paths)
    for i in (0, 3, 5):
        np.testing.assert_array_equal(frame.loc[f"item-{i}", "embedding"], want[i])


def test_parquet_table_with_path_and_id_columns(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 5)
    table = tmp_path / "meta.parquet"
    pd.DataFrame(
        {
            "file": [str(p) for p in paths],
            "key": ["e", "d", "c", "b", "a"],
            "label": list("vwxyz"),
        }
    ).to_parquet(table)
    out = tmp_path / "lat"

    run(table, out, path_column="file", id_column="key")

    frame = open_latents(out).to_pandas().set_index("id")
    assert sorted(frame.index) == ["a", "b", "c", "d", "e"]
    assert frame.columns.tolist() == ["source", "label", "embedding"]
    assert frame.loc["e", "label"] == "v"
    np.testing.assert_array_equal(frame.loc["a", "embedding"], expected_vectors([paths[4]])[0])


def test_carried_column_missing_in_the_first_batches(tmp_path: Path) -> None:
    """Regression: a column whose first batch is all missing was typed null, and the
    next batch with values failed to cast (an uncaught ArrowNotImplementedError)."""
    paths = make_images(tmp_path / "imgs", 8)
    frame = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "flag": [None, None, None, None, True, False, None, True],
            "tags": [None, None, None, None, ["a"], ["b", "c"], [], None],
            "note": [None] * 4 + ["x", "y", "z", None],
            "count": [None] * 4 + [1, 2, 3, 4],
        }
    )
    out = tmp_path / "lat"

    result = run(frame, out, batch_size=4)

    assert result.embedded == 8
    ds = open_latents(out)
    assert ds.schema.field("flag").type == pa.bool_()
    assert ds.schema.field("tags").type == pa.list_(pa.string())
    got = ds.to_pandas(embedding=False).set_index("id")
    got = got.reindex([p.as_posix() for p in paths])  # no id column: the id is the path
    assert [None if pd.isna(x) else bool(x) for x in got["flag"]] == [None] * 4 + [
        True,
        False,
        None,
        True,
    ]
    fifth = paths[5].as_posix()
    assert list(got.loc[fifth, "tags"]) == ["b", "c"]
    assert got.loc[fifth, "note"] == "y"
    assert got.loc[fifth, "count"] == 2
    assert got["note"].isna().tolist() == [True] * 4 + [False] * 3 + [True]


def test_path_list_source(tmp_path: Path) -> None:
    a = make_images(tmp_path / "x", 2)
    b = make_images(tmp_path / "y" / "z", 2, start=2)
    out = tmp_path / "lat"
    result = run([*a, *map(str, b)], out)
    assert result.embedded == 4
    got = vectors_by_id(out)
    assert sorted(got) == [
        "x/img_0000.png",
        "x/img_0001.png",
        "y/z/img_0002.png",
        "y/z/img_0003.png",
    ]
    np.testing.assert_array_equal(got["y/z/img_0003.png"], expected_vectors([b[1]])[0])


def test_dataframe_source(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 4)
    frame = pd.DataFrame(
        {"path": [str(p) for p in paths], "id": list("abcd"), "group": [1, 1, 2, 2]},
        index=[40, 30, 20, 10],
    )
    out = tmp_path / "lat"
    run(frame, out, batch_size=3)
    got = open_latents(out).to_pandas().set_index("id")
    assert got["group"].to_dict() == {"a": 1, "b": 1, "c": 2, "d": 2}
    want = expected_vectors(paths)
    for k, i in enumerate("abcd"):
        np.testing.assert_array_equal(got.loc[i, "embedding"], want[k])


def test_backbone_instance_and_options(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 3)
    run(tmp_path / "imgs", tmp_path / "a", backbone=PixelsBackbone(size=4, device="cpu"))
    run(tmp_path / "imgs", tmp_path / "b", backbone_options={"size": 4})
    for out in (tmp_path / "a", tmp_path / "b"):
        ds = open_latents(out)
        assert ds.dim == 48
        assert ds.backbone.config == {"size": 4}
        np.testing.assert_array_equal(
            vectors_by_id(out)["img_0002.png"], expected_vectors([paths[2]], size=4)[0]
        )


def test_ids_and_vectors_are_stable_across_runs(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 7)
    run(tmp_path / "imgs", tmp_path / "one", batch_size=3)
    run(tmp_path / "imgs", tmp_path / "two", batch_size=5)
    one, two = open_latents(tmp_path / "one"), open_latents(tmp_path / "two")
    assert one.ids().tolist() == two.ids().tolist() == sorted(one.ids().tolist())
    np.testing.assert_array_equal(one.to_numpy(), two.to_numpy())


def test_normalize_gives_unit_rows(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 5)
    out = tmp_path / "lat"
    run(tmp_path / "imgs", out, normalize=True)
    ds = open_latents(out)
    assert ds.normalized is True
    assert ds.meta.normalized is True
    vectors = ds.to_numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    want = expected_vectors(paths)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = vectors_by_id(out)
    np.testing.assert_allclose(got["img_0004.png"], want[4], atol=1e-6)


def test_float16_storage(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 5)
    out16, out32 = tmp_path / "f16", tmp_path / "f32"
    run(tmp_path / "imgs", out16, dtype="float16")
    run(tmp_path / "imgs", out32)
    ds = open_latents(out16)
    assert ds.meta.dtype == "float16"
    assert ds.schema.field("embedding").type.value_type == pa.float16()
    for part in out16.glob("part-*.parquet"):
        assert pq.read_schema(part).field("embedding").type.value_type == pa.float16()
    half = ds.to_numpy()
    assert half.dtype == np.float16
    full = open_latents(out32).to_numpy()
    assert full.dtype == np.float32
    np.testing.assert_allclose(half.astype(np.float32), full, atol=1e-3)
    np.testing.assert_allclose(full, expected_vectors(paths), atol=0)


def test_float16_with_normalize(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 4)
    out = tmp_path / "lat"
    run(tmp_path / "imgs", out, dtype="float16", normalize=True)
    norms = np.linalg.norm(open_latents(out).to_numpy().astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_unknown_dtype_is_refused(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 1)
    with pytest.raises(InputError, match="float64"):
        run(tmp_path / "imgs", tmp_path / "lat", dtype="float64")


def test_rows_per_part_splits_into_complete_parts(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 10)
    out = tmp_path / "lat"
    run(tmp_path / "imgs", out, rows_per_part=4, batch_size=2)
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name[:11] for p in parts] == [f"part-0000{i}-" for i in range(3)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [4, 4, 2]
    assert not list(out.glob(".*.tmp"))  # no temp files left behind
    assert len(set(open_latents(out).ids())) == 10


# -- bad inputs ----------------------------------------------------------------------------


def test_bad_files_are_recorded_and_skipped(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    good = make_images(src, 6)
    bad = write_bad_files(src)
    (src / "readme.txt").write_text("ignored: not an image extension")
    out = tmp_path / "lat"

    result = run(src, out, batch_size=4)

    assert (result.embedded, result.skipped, result.errors) == (6, 0, 3)
    assert "3 errors" in result.summary()
    ds = open_latents(out)
    assert sorted(ds.ids()) == [p.name for p in good]
    errors = ds.errors().set_index("source")["reason"].to_dict()
    assert sorted(errors) == sorted(str(p.resolve()) for p in bad.values())
    assert errors[str(bad["garbage"].resolve())].startswith("UnidentifiedImageError: ")
    assert errors[str(bad["zero"].resolve())].startswith("UnidentifiedImageError: ")
    assert errors[str(bad["truncated"].resolve())].startswith("OSError: image file is truncated")
    assert all("\n" not in r and len(r) <= 300 for r in errors.values())
    got = vectors_by_id(out)
    np.testing.assert_array_equal(got["img_0005.png"], expected_vectors([good[5]])[0])


def test_missing_files_in_a_table_are_recorded(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 2)
    frame = pd.DataFrame({"path": [str(paths[0]), str(tmp_path / "gone.png"), str(paths[1])]})
    out = tmp_path / "lat"
    result = run(frame, out)
    assert (result.embedded, result.errors) == (2, 1)
    errors = open_latents(out).errors()
    assert errors["source"].tolist() == [str(tmp_path / "gone.png")]
    assert errors["reason"].iloc[0].startswith("FileNotFoundError")


def test_rerun_skips_errors_unless_retried(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    good = make_images(src, 4)
    bad = write_bad_files(src)
    out = tmp_path / "lat"
    run(src, out)

    again = run(src, out)
    assert (again.embedded, again.skipped, again.errors) == (0, 7, 0)
    assert len(open_latents(out).errors()) == 3  # not recorded twice

    # Fix one file: a plain re-run still skips it ...
    fixed = np.random.default_rng(3).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(fixed).save(bad["truncated"], format="JPEG")
    plain = run(src, out)
    assert (plain.embedded, plain.skipped) == (0, 7)
    assert "truncated.jpg" not in set(open_latents(out).ids())

    # ... retry_errors embeds it; the still-broken ones are recorded again, once.
    retried = run(src, out, retry_errors=True)
    assert (retried.embedded, retried.skipped, retried.errors) == (1, 4, 2)
    ds = open_latents(out)
    assert sorted(ds.ids()) == sorted([p.name for p in good] + ["truncated.jpg"])
    assert sorted(ds.errors()["source"]) == sorted(
        str(bad[k].resolve()) for k in ("garbage", "zero")
    )
    np.testing.assert_array_equal(
        vectors_by_id(out)["truncated.jpg"], expected_vectors([bad["truncated"]])[0]
    )


def test_all_bad_corpus_is_an_input_error(tmp_path: Path) -> None:
    write_bad_files(tmp_path / "imgs")
    out = tmp_path / "lat"
    with pytest.raises(InputError, match=r"no image in the source could be read \(3 errors\)"):
        run(tmp_path / "imgs", out)
    assert not list(out.glob("part-*.parquet"))


def test_bad_source_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "lat"
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path / "missing", out)
    assert not out.exists()


# -- resume and refusals ---------------------------------------------------------------------


def test_resume_embeds_only_new_images(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    old = make_images(src, 10)
    out = tmp_path / "lat"
    first = run(src, out, batch_size=4)
    assert first.embedded == 10
    before = vectors_by_id(out)

    new = make_images(src, 5, start=10)
    second = run(src, out, batch_size=4)

    assert (second.embedded, second.skipped, second.errors) == (5, 10, 0)
    ds = open_latents(out)
    ids = ds.ids().tolist()
    assert len(ids) == len(set(ids)) == 15
    assert sorted(ids) == sorted(p.name for p in old + new)
    after = vectors_by_id(out)
    for i, vector in before.items():
        np.testing.assert_array_equal(after[i], vector)
    want = expected_vectors(new)
    for p, vector in zip(new, want, strict=True):
        np.testing.assert_array_equal(after[p.name], vector)

    third = run(src, out)
    assert (third.embedded, third.skipped) == (0, 15)
    assert len(open_latents(out)) == 15


def test_resume_from_a_table_keeps_carried_columns(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "imgs", 6)
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": list("abcdef")})
    out = tmp_path / "lat"
    run(frame.iloc[:3], out)
    result = run(frame, out)
    assert (result.embedded, result.skipped) == (3, 3)
    got = open_latents(out).to_pandas(embedding=False).set_index("id")["label"].to_dict()
    assert got == {p.as_posix(): label for p, label in zip(paths, "abcdef", strict=True)}


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 3)
    out = tmp_path / "lat"
    out.mkdir()
    stale = out / ".part-00000.deadbeef.tmp"
    stale.write_bytes(b"half a parquet file")
    run(tmp_path / "imgs", out)
    assert not stale.exists()
    assert len(open_latents(out)) == 3


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"backbone_options": {"size": 8}}, {"backbone_options": {"size": 4}}),
        ({}, {"backbone": MeanColor()}),
        ({"backbone": MeanColor()}, {}),
    ],
    ids=["pixels8-then-pixels4", "pixels-then-other", "other-then-pixels"],
)
def test_other_backbone_into_the_same_folder_is_refused(
    tmp_path: Path, first: dict, second: dict
) -> None:
    make_images(tmp_path / "imgs", 3)
    out = tmp_path / "lat"
    run(tmp_path / "imgs", out, **first)
    make_images(tmp_path / "imgs", 2, start=3)
    with pytest.raises(InputError, match="refusing to add") as exc:
        run(tmp_path / "imgs", out, **second)
    assert "\n" not in str(exc.value)
    assert "new folder" in str(exc.value)
    assert len(open_latents(out)) == 3  # untouched


def test_other_normalization_or_dtype_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 2)
    out = tmp_path / "lat"
    run(tmp_path / "imgs", out)
    with pytest.raises(InputError, match="normalized=False dtype=float32"):
        run(tmp_path / "imgs", out, normalize=True)
    with pytest.raises(InputError, match="normalized=False dtype=float32"):
        run(tmp_path / "imgs", out, dtype="float16")


# -- workers -------------------------------------------------------------------------------------


def test_worker_processes_give_identical_results(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    make_images(src, 17)
    write_bad_files(src)
    serial = run(src, tmp_path / "w0", num_workers=0, batch_size=4)
    parallel = run(src, tmp_path / "w2", num_workers=2, batch_size=4)
    assert (serial.embedded, serial.errors) == (parallel.embedded, parallel.errors) == (17, 3)
    a, b = open_latents(tmp_path / "w0"), open_latents(tmp_path / "w2")
    assert a.ids().tolist() == b.ids().tolist()
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    pd.testing.assert_frame_equal(
        a.errors().sort_values("source", ignore_index=True),
        b.errors().sort_values("source", ignore_index=True),
    )


# -- memory ----------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import embedkit

    src, out = sys.argv[1], sys.argv[2]
    result = embedkit.embed(
        src, "pixels", out, num_workers=0, batch_size=50, rows_per_part=200,
        progress=False, backbone_options={"size": 32},
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        peak //= 1024  # bytes there, KiB on Linux
    print(json.dumps({"embedded": result.embedded, "peak_kib": peak}))
    """
)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """Peak RSS embedding 2,000 images stays within a few MiB of embedding 200.

    ``import torch`` alone peaks near 1 GiB here, so a ratio bound (e.g. 1.3x) would
    let hundreds of MiB grow unnoticed; the bound is absolute instead. With
    ``size=32`` each vector (and each preprocessed tensor) is 3,072 float32 = 12 KiB,
    so keeping the 1,800 extra rows in memory would add ~22 MiB; parts close every
    200 rows, so the writer's buffer is the same in both runs. Measured: ~3 MiB.
    """
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    env = {**os.environ, "EMBEDKIT_LOAD_PLUGINS": "pixels"}
    peaks = {}
    for n in (200, 2000):
        make_images(tmp_path / f"imgs{n}", n)
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"imgs{n}"), str(tmp_path / f"lat{n}")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["embedded"] == n
        peaks[n] = report["peak_kib"] / 1024
    assert len(open_latents(tmp_path / "lat2000")) == 2000
    growth = peaks[2000] - peaks[200]
    assert growth <= 12, f"peak RSS grew {growth:.1f} MiB: {peaks}"
    assert peaks[2000] <= 1.3 * peaks[200]
