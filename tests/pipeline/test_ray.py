"""The Ray engine (``engine="ray"``) on a local two-CPU Ray: the same dataset as the local
engine, resume, bad images, worker errors, the CLI flags, resource planning, and the
one-line error when Ray is missing.

Ray starts once for the module (~5-20 s); tests needing it skip when Ray is not installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from embedkit_pixels import PixelsBackbone
from PIL import Image
from same_dataset import assert_same_dataset, by_id

import embedkit
from embedkit import BackboneError, EmbedkitError, InputError, open_latents
from embedkit.cli import main
from embedkit.pipeline.ray_cluster import ACTORS_ENV, MISSING_RAY, one_line_error, plan_resources
from embedkit.pipeline.ray_part_writer import check_run_token, publish_run_token
from embedkit.pipeline.ray_writes import WRITES_ENV
from embedkit.store import ERRORS_DIR

N = 200
# Ray Data's own deprecation notices about its settings, not about embedkit
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """A local Ray with two CPUs for the whole module, shut down after it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'embedkit[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is missing: pip install 'embedkit[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    if started:
        ray.shutdown()


def run_ray(source, out: Path, backbone="pixels", **kwargs) -> embedkit.EmbedResult:
    kwargs = {"batch_size": 32, "progress": False, **kwargs}
    return embedkit.embed(source, backbone, out, engine="ray", **kwargs)


def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rgb = np.random.default_rng(i).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
        paths.append(folder / f"img_{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


# -- the same dataset as the local engine ------------------------------------------------


@pytest.mark.parametrize("writes", ["workers", "driver"])
def test_same_dataset_as_local_engine(
    ray_cluster, shapes: Path, local_out: Path, tmp_path: Path, monkeypatch, writes: str
) -> None:
    monkeypatch.setenv(WRITES_ENV, writes)
    out = tmp_path / "lat"
    result = run_ray(shapes, out)

    assert (result.path, result.embedded, result.skipped, result.errors) == (out, N, 0, 0)
    assert_same_dataset(out, local_out, N)
    assert [f.name[:11] for f in open_latents(out).files] == ["part-00000-"]
    assert not list(out.glob(".*.tmp"))
    assert not (out / ERRORS_DIR).exists()
    node = ray_cluster.get_runtime_context().get_node_id()
    assert result.rows_by_node == ({node: N} if writes == "workers" else {})


def test_source_columns_named_like_engine_columns(ray_cluster, tmp_path: Path) -> None:
    """The carried columns travel apart from the engine's own (error, size, pixels, ...):
    none is lost or overwritten, types and nulls are kept, reserved names are not stored."""
    paths = write_images(tmp_path / "imgs", 5)
    table = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "error": ["e0", None, "e2", "e3", "e4"],
            "size": [10, 11, None, 13, 14],
            "mtime": [0.5, 1.5, 2.5, None, 4.5],
            "pixels": [[1], [], None, [1, 2], [3]],
            "fatal": [True, False, None, True, False],
            "carried": ["c"] * 5,
            "embedding": ["not stored"] * 5,
            "nothing": [None] * 5,
        }
    )
    table.to_parquet(tmp_path / "table.parquet")
    run_ray(tmp_path / "table.parquet", tmp_path / "ray")
    embedkit.embed(tmp_path / "table.parquet", "pixels", tmp_path / "local", num_workers=0,
                   progress=False)  # fmt: skip

    got, want = by_id(tmp_path / "ray"), by_id(tmp_path / "local")
    pd.testing.assert_frame_equal(got, want)
    np.testing.assert_allclose(got.attrs["vectors"], want.attrs["vectors"], atol=1e-5, rtol=0)
    assert got["error"].fillna("-").tolist() == ["e0", "-", "e2", "e3", "e4"]
    assert [list(v) for v in got["pixels"][:2]] == [[1], []] and got["pixels"].isna()[2]
    assert got["nothing"].isna().all() and got["carried"].eq("c").all()
    ray_schema, local_schema = (open_latents(tmp_path / d).schema for d in ("ray", "local"))
    assert ray_schema.remove_metadata() == local_schema.remove_metadata()
    assert ray_schema.names == [
        "id", "source", "source_size", "source_mtime_ns", "error", "size", "mtime", "pixels",
        "fatal", "carried", "nothing", "embedding",
    ]  # fmt: skip


def test_resume_embeds_only_the_rest(ray_cluster, shapes: Path, local_out: Path, tmp_path: Path):
    labels = pd.read_parquet(shapes)
    half = labels.iloc[: N // 2].copy()
    half["path"] = [str(shapes.parent / p) for p in half["path"]]  # the table is elsewhere
    half_table = tmp_path / "half.parquet"
    half.to_parquet(half_table)
    out = tmp_path / "lat"

    first = run_ray(half_table, out)
    second = run_ray(shapes, out)
    third = run_ray(shapes, out)  # nothing left: returns before Ray does any work

    assert (first.embedded, first.skipped) == (N // 2, 0)
    assert (second.embedded, second.skipped, second.errors) == (N - N // 2, N // 2, 0)
    assert (third.embedded, third.skipped) == (0, N)
    ids = open_latents(out).ids().tolist()
    assert len(ids) == len(set(ids)) == N
    got, want = by_id(out), by_id(local_out)
    np.testing.assert_allclose(got.attrs["vectors"], want.attrs["vectors"], atol=1e-5, rtol=0)
    pd.testing.assert_frame_equal(got, want)


def test_bad_image_is_recorded_not_raised(ray_cluster, tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    write_images(src, 6)
    garbage = src / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")

    result = run_ray(src, tmp_path / "ray")
    local = embedkit.embed(src, "pixels", tmp_path / "local", num_workers=0, progress=False)

    assert (result.embedded, result.errors) == (6, 1)
    errors = open_latents(tmp_path / "ray").errors()
    assert errors["source"].tolist() == [str(garbage)]
    assert errors["reason"].iloc[0].startswith("UnidentifiedImageError: ")
    assert errors.equals(open_latents(tmp_path / "local").errors())
    assert local.errors == 1
    assert sorted(open_latents(tmp_path / "ray").ids()) == [f"img_{i}.png" for i in range(6)]
    again = run_ray(src, tmp_path / "ray")  # the failed input is not retried by default
    assert (again.embedded, again.skipped, again.errors) == (0, 7, 0)


class Exploding(PixelsBackbone):
    """Decodes fine, but the model fails: an error of the run, not of one image."""

    def forward(self, batch):
        raise BackboneError("the model exploded")


def test_worker_error_comes_back_in_one_line(ray_cluster, tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    write_images(src, 4)
    # a Backbone object is shipped to the actors as is (by value: tests/ is not a package)
    pickler = ray_cluster.cloudpickle
    pickler.register_pickle_by_value(sys.modules[__name__])
    try:
        with pytest.raises(BackboneError) as info:
            run_ray(src, tmp_path / "lat", backbone=Exploding(device="cpu"))
    finally:
        pickler.unregister_pickle_by_value(sys.modules[__name__])
    assert str(info.value) == "the model exploded"
    assert not list((tmp_path / "lat").glob("part-*.parquet"))


class BrokenOnTiny(PixelsBackbone):
    """A plugin bug: ``preprocess`` raises on 7x7 images (all others embed)."""

    def preprocess(self, image):
        if image.size == (7, 7):
            raise RuntimeError("preprocess bug")
        return super().preprocess(image)


def test_preprocess_bug_stops_the_run_in_one_line(ray_cluster, tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    write_images(src, 6)
    tiny = src / "tiny.png"
    Image.new("RGB", (7, 7)).save(tiny)
    out = tmp_path / "lat"
    pickler = ray_cluster.cloudpickle
    pickler.register_pickle_by_value(sys.modules[__name__])
    try:
        with pytest.raises(BackboneError) as info:
            run_ray(src, out, backbone=BrokenOnTiny(device="cpu"))
    finally:
        pickler.unregister_pickle_by_value(sys.modules[__name__])
    message = str(info.value)
    assert "\n" not in message
    assert f"failed in preprocess on {tiny}: RuntimeError: preprocess bug" in message
    assert "a bug in the backbone, not a bad image" in message
    assert not (out / ERRORS_DIR).exists()  # not recorded as a bad image
    assert not list(out.glob(".*.tmp"))  # the stopped writer left no staged part
    again = run_ray(src, out)  # the lock was released; what was committed is kept
    assert again.embedded + again.skipped == 7
    assert sorted(open_latents(out).ids()) == sorted(
        [f"img_{i}.png" for i in range(6)] + ["tiny.png"]
    )


def test_writes_mode_is_checked(monkeypatch, tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 1)
    monkeypatch.setenv(WRITES_ENV, "disk")
    with pytest.raises(InputError) as info:
        run_ray(tmp_path / "imgs", tmp_path / "lat")
    assert str(info.value) == "$EMBEDKIT_RAY_WRITES must be 'workers' or 'driver', got 'disk'"
    assert not (tmp_path / "lat").exists()  # refused before Ray or the folder


def test_part_writer_refuses_a_folder_it_does_not_share(tmp_path: Path) -> None:
    """A node whose folder at that path is not the driver's (no shared file system)."""
    out = tmp_path / "lat"
    (out / ".embedkit").mkdir(parents=True)
    token = publish_run_token(out)
    check_run_token(str(out), token, "ab" * 28)  # the driver's folder: accepted
    for folder, seen in ((out, "another run"), (tmp_path / "elsewhere", None)):
        if seen:
            (folder / ".embedkit" / "ray-run.token").write_text(seen)
        with pytest.raises(InputError) as info:
            check_run_token(str(folder), token, "ab" * 28)
        assert str(info.value) == (
            f"node abababababab does not see the dataset folder {folder} the driver writes: "
            "with the ray engine every node writes parts there, so it must be on a file "
            "system every node shares, at the same path (or set EMBEDKIT_RAY_WRITES=driver)"
        )


def test_one_line_from_ray_traceback_text() -> None:
    class Wrapped(Exception):
        pass

    text = (
        "ray::MapWorker(MapBatches(_Encoder)).submit() (pid=1)\n"
        '  File "x.py", line 3, in forward\n'
        "embedkit.errors.BackboneNotFound: unknown backbone 'x'\n\n"
        "The above exception was the direct cause of the following exception:\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block."
    )
    outer = Wrapped("UDF failed")
    outer.__cause__ = Exception(text)
    error = one_line_error(outer)
    assert type(error) is embedkit.BackboneNotFound
    assert str(error) == "unknown backbone 'x'"
    other = Exception('  File "y.py"\ntorch.OutOfMemoryError: CUDA out of memory\nmore')
    assert (
        str(one_line_error(other)) == "the ray engine failed: OutOfMemoryError: CUDA out of memory"
    )
    assert str(one_line_error(Wrapped("plain"))) == "the ray engine failed: Wrapped: plain"


# -- the CLI -------------------------------------------------------------------------------


def test_cli_engine_ray(ray_cluster, shapes: Path, tmp_path: Path, capsys) -> None:
    out, local = tmp_path / "ray", tmp_path / "local"
    args = ["--normalize", "--dtype", "float16", "--batch-size", "16"]
    main(["embed", str(shapes), "-b", "pixels", "-o", str(out), "--engine", "ray", *args])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"embedded {N} images (")
    assert line.endswith(f"skipped 0 already present, 0 errors -> {out}")
    main(["embed", str(shapes), "-b", "pixels", "-o", str(local), "--workers", "0", *args])
    got, want = by_id(out), by_id(local)
    assert open_latents(out).meta.normalized and open_latents(out).meta.dtype == "float16"
    assert pq.read_schema(next(out.glob("part-*.parquet"))).field("embedding").type == (
        pq.read_schema(next(local.glob("part-*.parquet"))).field("embedding").type
    )
    np.testing.assert_allclose(got.attrs["vectors"], want.attrs["vectors"], atol=1e-3, rtol=0)
    pd.testing.assert_frame_equal(got, want)


def test_cli_address_needs_engine_ray(tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "imgs", 1)
    argv = ["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(tmp_path / "lat")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--address", "ray://head:10001"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: ray_address needs engine='ray' (--engine ray)\n"
    with pytest.raises(SystemExit):
        main([*argv, "--engine", "spark"])
    assert "'spark' is not one of 'local', 'ray'" in capsys.readouterr().err


# -- without Ray ---------------------------------------------------------------------------


def test_missing_ray_is_a_one_line_error(monkeypatch, tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "imgs", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(EmbedkitError) as info:
        embedkit.embed(tmp_path / "imgs", "pixels", tmp_path / "lat", engine="ray")
    assert str(info.value) == MISSING_RAY == "the ray engine needs Ray: pip install 'embedkit[ray]'"
    assert not (tmp_path / "lat").exists()  # refused before anything was written
    argv = ["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(tmp_path / "lat")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--engine", "ray"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {MISSING_RAY}\n"


def test_unknown_engine(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 1)
    with pytest.raises(InputError, match="engine 'dask' is not supported; use local or ray"):
        embedkit.embed(tmp_path / "imgs", "pixels", tmp_path / "lat", engine="dask")


# -- resource planning (no cluster: a stand-in for ray.cluster_resources) ----------------


def fake_ray(cpus: float, gpus: float = 0) -> SimpleNamespace:
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return SimpleNamespace(cluster_resources=lambda: resources)


def test_plan_gpu_cluster_one_actor_per_gpu(monkeypatch) -> None:
    monkeypatch.delenv(ACTORS_ENV, raising=False)
    plan = plan_resources(fake_ray(32, gpus=4), None, None, None)
    assert (plan["actors"], plan["gpus_per_actor"], plan["device"]) == (4, 1.0, "cuda")
    plan = plan_resources(fake_ray(32, gpus=4), None, None, 0.5)
    assert (plan["actors"], plan["gpus_per_actor"]) == (8, 0.5)
    plan = plan_resources(fake_ray(32, gpus=4), "cpu", None, None)  # device=cpu: no GPUs asked for
    assert (plan["gpus_per_actor"], plan["device"], plan["actors"]) == (0.0, "cpu", 16)


def test_plan_cpu_cluster_leaves_cores_to_decode(monkeypatch) -> None:
    monkeypatch.delenv(ACTORS_ENV, raising=False)
    plan = plan_resources(fake_ray(16), None, None, None)
    assert (plan["actors"], plan["actor_cpus"], plan["device"]) == (8, 1.0, "cpu")
    assert plan_resources(fake_ray(2), None, None, None)["actors"] == 1
    assert plan_resources(fake_ray(4), None, 10, None)["actors"] == 3  # one core always decodes
    small = plan_resources(fake_ray(1), None, None, None)
    assert (small["actors"], small["actor_cpus"], small["decode_cpus"]) == (1, 0.5, 0.5)
    monkeypatch.setenv(ACTORS_ENV, "2")
    assert plan_resources(fake_ray(16), None, None, None)["actors"] == 2
    monkeypatch.setenv(ACTORS_ENV, "many")
    with pytest.raises(InputError, match=r"\$EMBEDKIT_RAY_ACTORS must be an integer"):
        plan_resources(fake_ray(16), None, None, None)
    with pytest.raises(InputError, match="at least one actor"):
        plan_resources(fake_ray(16), None, 0, None)
