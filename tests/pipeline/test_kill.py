"""SIGKILL at the worst moments: mid row group, with a part complete but not renamed,
after a rename before the folder is synced, after an errors part, mid index save, mid
checkpoint. The dataset stays readable, and a re-run completes it with every image
exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from sample_images import make_images

import embedkit
from embedkit import InputError, open_latents

N = 24
#: a child process that runs CODE and kills itself (SIGKILL) at the Nth call of a function
KILLER = """
import os, signal, sys, importlib
target, name, nth, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "after"
module, _, cls = target.partition(":")
owner = importlib.import_module(module)
owner = getattr(owner, cls) if cls else owner
original, calls = getattr(owner, name), [0]
def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and not after:
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, wrapper)
"""


def killed(code: str, target: str, name: str, nth: int, after: bool) -> None:
    script = KILLER + textwrap.dedent(code)
    argv = [sys.executable, "-c", script, target, name, str(nth), "after" if after else "before"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, N)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def embed_code(corpus: Path, out: Path) -> str:
    return f"""
        import embedkit
        embedkit.embed({str(corpus)!r}, "pixels", {str(out)!r}, batch_size=4,
                       rows_per_part=8, num_workers=0, progress=False)
    """


def embed_again(corpus: Path, out: Path) -> embedkit.EmbedResult:
    return embedkit.embed(
        corpus, "pixels", out, batch_size=4, rows_per_part=8, num_workers=0, progress=False
    )


@pytest.mark.parametrize(
    ("target", "name", "nth", "after"),
    [
        ("pyarrow.parquet:ParquetWriter", "write_table", 2, True),  # a part half written
        ("embedkit.store.writer", "replace_durably", 2, False),  # complete, not renamed
        ("embedkit.files", "fsync_dir", 2, False),  # renamed, folder not synced
        ("embedkit.store.writer", "atomic_write_table", 1, True),  # right after errors
    ],
    ids=["mid-part", "before-rename", "after-rename", "after-errors"],
)
def test_embed_killed_then_resumed(corpus, tmp_path, target, name, nth, after):
    out = tmp_path / "lat"
    killed(embed_code(corpus, out), target, name, nth, after)
    if list(out.glob("part-*.parquet")):
        partial = open_latents(out)  # readable: only complete parts are visible
        assert len(set(partial.ids())) == len(partial)
    result = embed_again(corpus, out)
    ds = open_latents(out)
    sources = ds.to_table(["source"]).column("source").to_pylist()
    assert sorted(ds.ids().tolist()) == [f"img_{i:04d}.png" for i in range(N)]
    assert len(set(sources)) == N  # every image exactly once
    errors = ds.errors()["source"].map(lambda s: Path(s).name).tolist()
    assert sorted(errors) == ["broken.png", "empty.jpg"]  # once each
    assert result.embedded + result.skipped == N + 2 - result.errors
    assert not list(out.glob(".*.tmp"))


def test_index_save_killed(corpus, tmp_path):
    out = tmp_path / "lat"
    embed_again(corpus, out)
    embedkit.build_index(out, progress=False)
    code = f"import embedkit; embedkit.build_index({str(out)!r}, kind='hnsw', progress=False)"
    killed(code, "faiss", "write_index", 1, True)  # index.faiss new, index.json not yet
    with pytest.raises(InputError, match="no index in"):
        embedkit.load_index(out)  # never a half-saved index
    assert len(embedkit.neighbors(out, ids=["img_0003.png"], k=3)) == 3  # exact search meanwhile
    rebuilt = embedkit.build_index(out, kind="hnsw", progress=False)
    assert embedkit.load_index(out).info.factory == rebuilt.info.factory


@pytest.mark.slow
def test_checkpoint_save_killed(tmp_path):
    from embedkit_vae import train

    from embedkit.images.corpus import make_shapes

    make_shapes(tmp_path / "corpus", n=48, size=32, seed=1)
    options = {"image_size": 32, "channels": (8, 16, 32), "latent_dim": 4, "batch_size": 16}
    options |= {"epochs": 3, "progress": False}
    run = tmp_path / "run"
    code = f"""
        from embedkit_vae import train
        train({str(tmp_path / "corpus")!r}, {str(run)!r}, "vae", **{options!r})
    """
    # epoch 2's checkpoint: the training state written, the model file not yet
    killed(code, "embedkit_vae.run_state", "save_model", 2, False)
    result = train(tmp_path / "corpus", run, "vae", **options)
    assert result.resumed_from == 2 and result.epoch == 3
    assert pd.DataFrame(result.history)["epoch"].tolist() == [1, 2, 3]
    assert os.path.isfile(run / "model.safetensors")
    embedkit.load_backbone(f"vae:{run}", device="cpu")
