"""README.md's three user stories run as printed (on the built-in corpus, offline)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embedkit

README = Path(__file__).resolve().parents[1] / "README.md"
# The README uses timm/resnet18 (hub weights, needs a network) and full-size settings; the
# same commands run offline and fast with the weight-free pixels backbone and a small corpus.
# pretrained/efficientnet_lite0 runs as printed: its weights come with a package.
OFFLINE = {
    "timm/resnet18": "pixels",
    "--n 2000 --size 64": "--n 300 --size 32",
    "--epochs 20 --image-size 64": "--epochs 1 --image-size 32",
    "embedkit serve latents/": "embedkit serve --help",  # serves until Ctrl-C: tests/serve
}


def section(title_start: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title_start}")
    end = text.find("\n## ", start + 4)
    return text[start : end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def offline(code: str) -> str:
    for old, new in OFFLINE.items():
        code = code.replace(old, new)
    return code


def run_shell(block: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in offline(block).splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith("#"):
            continue
        done = subprocess.run(
            command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command!r} failed:\n{done.stderr[-2000:]}"


def test_story_1_plugin_registers_and_embeds(install_plugin, rng_images):
    story = section("1.")
    source = blocks(story, "python")[0]
    entry = re.search(r"^(\w+) = \"(\w+)\"", blocks(story, "toml")[0], flags=re.M)
    install_plugin(entry.group(2), source, entry.group(1))
    backbone = embedkit.load_backbone("meancolor")
    latents = backbone.encode_images(rng_images)
    assert latents.shape == (len(rng_images), 48)
    means = np.asarray(rng_images[0].convert("RGB").resize((64, 64)), np.float32) / 255
    assert np.allclose(latents[0].numpy().reshape(3, 16).mean(1), means.mean((0, 1)), atol=1e-4)
    assert any(e.name == "meancolor" for e in embedkit.list_backbones())


@pytest.mark.slow
def test_stories_2_and_3_and_training_run_as_printed(tmp_path, monkeypatch):
    for title in ("2.", "3.", "Train"):
        story = section(title)
        for block in blocks(story, "bash"):
            run_shell(block, tmp_path)
        monkeypatch.chdir(tmp_path)
        for block in blocks(story, "python"):
            exec(compile(offline(block), f"README {title}", "exec"), {"embedkit": embedkit})
    assert (tmp_path / "latents" / "index" / "index.faiss").is_file()
    assert (tmp_path / "sweep.png").is_file() and (tmp_path / "strip.png").is_file()
    vectors = embedkit.load_vectors(tmp_path / "vectors.parquet")
    assert {"filled", "color=red"} <= set(vectors)
