"""docs/plugins.md: the worked example plugin works exactly as printed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import embedkit
import embedkit.cli
from embedkit.images.decode import as_rgb

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def example_code(doc: str) -> str:
    match = re.search(r"<!-- example-plugin -->\n```python\n(.*?)```", doc, re.S)
    assert match, "docs/plugins.md lost its <!-- example-plugin --> python block"
    return match.group(1)


def entry_point(doc: str) -> tuple[str, str]:
    """(plugin name, module) from the pyproject.toml snippet in the docs."""
    match = re.search(r'\[project\.entry-points\.embedkit\]\n(\w+) = "(\w+)"\n', doc)
    assert match, "docs/plugins.md lost its [project.entry-points.embedkit] snippet"
    return match.group(1), match.group(2)


@pytest.fixture
def colorhist(doc, install_plugin, fresh_plugins):
    name, module = entry_point(doc)
    assert f"Save this as `{module}.py`" in doc
    fresh_plugins.setenv("EMBEDKIT_LOAD_PLUGINS", name)
    install_plugin(module, example_code(doc), name)
    return name


def histogram(image: Image.Image, bins: int, size: int = 64) -> np.ndarray:
    """The colour histogram computed independently with numpy, of the image as the one
    decoder makes it (encode_images composites transparency onto white, as for a corpus)."""
    pixels = np.array(as_rgb(image).resize((size, size))).astype(np.int64)
    index = np.minimum(pixels * bins // 255, bins - 1)
    counts = [np.bincount(index[..., c].ravel(), minlength=bins) for c in range(3)]
    return np.concatenate(counts) / (size * size)


def test_example_is_short_and_tidy(doc):
    code = example_code(doc)
    lines = code.splitlines()
    assert len(lines) < 50
    assert max(len(line) for line in lines) <= 100
    compile(code, "embedkit_colorhist.py", "exec")


def test_example_registers_and_encodes(colorhist, tmp_image_dir):
    assert embedkit.broken_plugins() == {}
    entries = {e.name: e for e in embedkit.list_backbones()}
    assert set(entries) == {"colorhist", "colorhist/"}
    assert entries["colorhist"].plugin == colorhist
    assert entries["colorhist/"].is_prefix

    images = [Image.open(p) for p in sorted(tmp_image_dir.glob("*.png"))]
    for name, bins in [("colorhist", 8), ("colorhist/16", 16), ("colorhist/3", 3)]:
        backbone = embedkit.load_backbone(name, device="cpu")
        assert backbone.dim == 3 * bins
        latents = backbone.encode_images(images)
        assert latents.shape == (len(images), backbone.dim)
        assert latents.dtype == torch.float32
        # each channel's histogram sums to one
        sums = latents.reshape(len(images), 3, bins).sum(dim=2)
        torch.testing.assert_close(sums, torch.ones_like(sums))
        expected = np.stack([histogram(im, bins) for im in images])
        np.testing.assert_allclose(latents.numpy(), expected, atol=1e-6)

        # the info rebuilds the same backbone
        rebuilt = embedkit.load_backbone(embedkit.BackboneInfo.from_json(backbone.info.to_json()))
        assert rebuilt.info == backbone.info
        assert torch.equal(rebuilt.encode_images(images[:3]), latents[:3])


def test_example_usage_output_is_as_documented(colorhist, doc, rng_images):
    backbone = embedkit.load_backbone("colorhist/16")
    assert backbone.encode_images(rng_images[:2]).shape == torch.Size([2, 48])
    printed = re.search(r"print\(backbone\.info\.to_json\(\)\)\n# (.*)\n", doc).group(1)
    assert backbone.info.to_json() == printed


def test_cli_lists_example_as_documented(colorhist, doc):
    result = CliRunner().invoke(embedkit.cli.get_cli(), ["backbones"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    # the `embedkit backbones` sample in the docs: "colorhist[/]  colorhist  description"
    documented = [
        line.split() for line in doc.splitlines() if re.match(r"colorhist/? +colorhist ", line)
    ]
    assert len(documented) == 2
    assert rows == [["BACKBONE", "PLUGIN", "DESCRIPTION"], *documented]
