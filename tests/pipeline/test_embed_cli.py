"""The ``embedkit embed`` command: summary, one-line errors, options, and resume after a kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sample_images import expected_vectors, make_images

from embedkit import open_latents
from embedkit.cli import main, parse_options
from embedkit.store.lock import STATE_DIR

SUMMARY = re.compile(
    r"^embedded (\d+) images \(\d+\.\d/s\), skipped (\d+) already present, (\d+) errors -> (.+)$"
)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``embedkit ARGS`` in-process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def summary(out: str) -> tuple[int, int, int, str]:
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    return int(match[1]), int(match[2]), int(match[3]), match[4]


def assert_one_line_error(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# -- summary and options -------------------------------------------------------------------


def test_embed_prints_the_summary(tmp_path: Path, capsys) -> None:
    paths = make_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"nope")
    out = tmp_path / "lat"
    code, stdout, _ = cli(capsys, "embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(out))
    assert code == 0
    assert summary(stdout) == (5, 0, 1, str(out))
    ds = open_latents(out)
    assert (ds.dim, ds.normalized, ds.meta.dtype) == (192, False, "float32")
    got = dict(zip(ds.ids(), ds.to_numpy(), strict=True))
    np.testing.assert_array_equal(got["img_0003.png"], expected_vectors([paths[3]])[0])

    code, stdout, _ = cli(
        capsys, "embed", str(tmp_path / "imgs"), "--backbone", "pixels", "--out", str(out)
    )
    assert code == 0
    assert summary(stdout) == (0, 6, 0, str(out))  # 5 done + 1 known error


def test_opt_size_sets_the_dimension(tmp_path: Path, capsys) -> None:
    paths = make_images(tmp_path / "imgs", 3)
    out = tmp_path / "lat"
    code, stdout, _ = cli(
        capsys,
        "embed",
        str(tmp_path / "imgs"),
        "-b",
        "pixels",
        "-o",
        str(out),
        "--opt",
        "size=4",
        "--workers",
        "0",
        "--batch-size",
        "2",
    )
    assert code == 0
    assert summary(stdout)[0] == 3
    ds = open_latents(out)
    assert ds.dim == 48
    assert ds.backbone.config == {"size": 4}
    np.testing.assert_array_equal(ds.to_numpy(), expected_vectors(paths, size=4))


def test_normalize_and_float16(tmp_path: Path, capsys) -> None:
    make_images(tmp_path / "imgs", 4)
    out = tmp_path / "lat"
    args = ["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(out), "--workers", "0"]
    code, _, _ = cli(capsys, *args, "--normalize", "--dtype", "float16")
    assert code == 0
    ds = open_latents(out)
    assert (ds.normalized, ds.meta.dtype) == (True, "float16")
    vectors = ds.to_numpy()
    assert vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)

    # Appending with other settings is refused in one line.
    code, _, err = cli(capsys, *args)
    assert code == 1
    assert_one_line_error(err, "normalized=True dtype=float16")


def test_bad_dtype_is_a_usage_error(tmp_path: Path, capsys) -> None:
    make_images(tmp_path / "imgs", 1)
    code, _, err = cli(
        capsys,
        "embed",
        str(tmp_path / "imgs"),
        "-b",
        "pixels",
        "-o",
        str(tmp_path / "o"),
        "--dtype",
        "float64",
    )
    assert code == 2
    assert "float64" in err
    assert "Traceback" not in err


def test_path_and_id_columns(tmp_path: Path, capsys) -> None:
    paths = make_images(tmp_path / "imgs", 3)
    table = tmp_path / "t.csv"
    pd.DataFrame(
        {"file": [f"imgs/{p.name}" for p in paths], "key": ["x", "y", "z"], "tag": [1, 2, 3]}
    ).to_csv(table, index=False)
    out = tmp_path / "lat"
    code, stdout, _ = cli(
        capsys,
        "embed",
        str(table),
        "-b",
        "pixels",
        "-o",
        str(out),
        "--path-column",
        "file",
        "--id-column",
        "key",
    )
    assert code == 0
    assert summary(stdout)[0] == 3
    frame = open_latents(out).to_pandas(embedding=False).set_index("id")
    assert frame["tag"].to_dict() == {"x": 1, "y": 2, "z": 3}


def test_retry_errors_flag(tmp_path: Path, capsys) -> None:
    make_images(tmp_path / "imgs", 2)
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(b"nope")
    out = tmp_path / "lat"
    args = ["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(out), "--workers", "0"]
    assert summary(cli(capsys, *args)[1]) == (2, 0, 1, str(out))
    Image.new("RGB", (8, 8), (10, 20, 30)).save(broken, format="PNG")
    assert summary(cli(capsys, *args)[1]) == (0, 3, 0, str(out))
    assert summary(cli(capsys, *args, "--retry-errors")[1]) == (1, 2, 0, str(out))
    assert open_latents(out).errors().empty
    assert "broken.png" in set(open_latents(out).ids())


# -- errors ------------------------------------------------------------------------------------


def test_missing_source_is_one_line_exit_1(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    code, stdout, err = cli(
        capsys, "embed", str(missing), "-b", "pixels", "-o", str(tmp_path / "o")
    )
    assert code == 1
    assert stdout == ""
    assert_one_line_error(err, str(missing), "does not exist")
    assert not (tmp_path / "o").exists()


def test_missing_path_column_is_one_line(tmp_path: Path, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text("file,label\na.png,x\n")
    code, _, err = cli(capsys, "embed", str(table), "-b", "pixels", "-o", str(tmp_path / "o"))
    assert code == 1
    assert_one_line_error(err, str(table), "file, label", "--path-column")


def test_empty_folder_and_all_bad_corpus(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "empty"), "-b", "pixels", "-o", str(tmp_path / "o")
    )
    assert code == 1
    assert_one_line_error(err, "holds no images")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"x")
    (bad / "b.jpg").write_bytes(b"")
    code, _, err = cli(capsys, "embed", str(bad), "-b", "pixels", "-o", str(tmp_path / "o"))
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # the progress bar may come first
    assert last.startswith("error: no image in the source could be read (2 errors)")


def test_unknown_backbone_is_one_line(tmp_path: Path, capsys) -> None:
    make_images(tmp_path / "imgs", 1)
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "imgs"), "-b", "pixelz", "-o", str(tmp_path / "o")
    )
    assert code == 1
    assert_one_line_error(err, "unknown backbone 'pixelz'", "pixels")


def test_other_backbone_into_same_folder_is_one_line(tmp_path: Path, capsys) -> None:
    make_images(tmp_path / "imgs", 2)
    out = tmp_path / "lat"
    args = ["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(out), "--workers", "0"]
    assert cli(capsys, *args)[0] == 0
    code, _, err = cli(capsys, *args, "--opt", "size=4")
    assert code == 1
    assert_one_line_error(err, "another latent space than pixels {'size': 4}")


def test_malformed_opt_is_a_usage_error(tmp_path: Path, capsys) -> None:
    make_images(tmp_path / "imgs", 1)
    code, _, err = cli(
        capsys,
        "embed",
        str(tmp_path / "imgs"),
        "-b",
        "pixels",
        "-o",
        str(tmp_path / "o"),
        "--opt",
        "size",
    )
    assert code == 2
    assert "'size' is not KEY=VALUE" in err
    assert "Traceback" not in err


def test_parse_options() -> None:
    assert parse_options(("size=4", "a=true", "b=False", "c=none", "d=x=y", " e =2,3")) == {
        "size": "4",
        "a": True,
        "b": False,
        "c": None,
        "d": "x=y",
        "e": "2,3",
    }
    assert parse_options(()) == {}


# -- resume after a kill -----------------------------------------------------------------------

SLOW_PLUGIN = '''
"""pixels, slowed down so a run can be killed part-way."""

import time

from embedkit_pixels import PixelsBackbone

from embedkit import hookimpl


class SlowPixels(PixelsBackbone):
    def forward(self, batch):
        time.sleep(0.05)
        return super().forward(batch)


@hookimpl
def register_backbones(register):
    register("slowpixels", SlowPixels, description="pixels, slowly (test)")
'''


def install_slow_plugin(root: Path) -> Path:
    """An installed-looking ``slowpix`` distribution in ``root`` (put it on PYTHONPATH)."""
    root.mkdir(parents=True)
    (root / "slowpix.py").write_text(textwrap.dedent(SLOW_PLUGIN))
    info = root / "slowpix-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slowpix\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[embedkit]\nslowpix = slowpix\n")
    return root


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path) -> None:
    """SIGKILL mid-run: only complete parts are visible; re-running finishes the job."""
    n, per_part = 600, 50
    paths = make_images(tmp_path / "imgs", n)
    out = tmp_path / "lat"
    site = install_slow_plugin(tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "EMBEDKIT_LOAD_PLUGINS": "pixels,slowpix",
    }
    script = Path(sys.executable).parent / "embedkit"
    command = [
        str(script),
        "embed",
        str(tmp_path / "imgs"),
        "-b",
        "slowpixels",
        "-o",
        str(out),
        "--rows-per-part",
        str(per_part),
        "--batch-size",
        "10",
        "--workers",
        "0",
    ]
    # 60 batches x 50 ms sleep: ~3 s of embedding after start-up; the first part lands
    # after 5 batches, so the kill comes well before the end.
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not list(out.glob("part-*.parquet")):
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no part appeared in time"
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # Only complete parts are visible, and each one reads in full.
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible, "nothing was written"
    assert all(re.fullmatch(r"part-\d{5}-[0-9a-f]{8}\.parquet", name) for name in visible), visible
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != STATE_DIR]
    assert all(re.fullmatch(r"\.part-\d{5}-[0-9a-f]{8}\.tmp", name) for name in hidden), hidden
    killed_rows = 0
    for name in visible:
        table = pq.read_table(out / name)
        assert table.num_rows == per_part
        assert pq.ParquetFile(out / name).metadata.num_rows == per_part
        killed_rows += table.num_rows
    assert killed_rows < n
    partial = open_latents(out)
    assert len(partial) == killed_rows
    assert len(set(partial.ids())) == killed_rows
    # A run killed while writing a part leaves a hidden temp file; make sure there is one.
    (out / ".part-00099.deadbeef.tmp").write_bytes(b"PAR1 half of a part")

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary(done.stdout) == (n - killed_rows, killed_rows, 0, str(out))

    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != STATE_DIR]
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name[:11] for p in parts] == [f"part-{i:05d}-" for i in range(n // per_part)]
    ds = open_latents(out)
    assert ds.backbone.name == "pixels"
    ids = ds.ids().tolist()
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {p.name for p in paths}
    got = dict(zip(ids, ds.to_numpy(), strict=True))
    want = expected_vectors(paths)
    np.testing.assert_array_equal(np.stack([got[p.name] for p in paths]), want)
