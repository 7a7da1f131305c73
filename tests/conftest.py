"""Shared fixtures. Everything here works offline: no test may touch the network."""

from __future__ import annotations

import os

# Must happen before huggingface_hub is imported (it reads the flag at import time):
# pretrained=True then fails fast instead of trying to reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from s3_fixtures import s3_bucket, s3_endpoint  # noqa: F401  (fixtures for every folder)

import embedkit
import embedkit.plugins

# One intra-op thread: on a small, busy CI box two spinning OpenMP threads make a tiny
# forward pass take seconds instead of milliseconds. EMBEDKIT_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("EMBEDKIT_TEST_THREADS", "1")))


@pytest.fixture
def rng_images() -> list[Image.Image]:
    """Four small random RGB images of different sizes (deterministic)."""
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (48, 40), (40, 56), (64, 64)]
    return [
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")
        for w, h in sizes
    ]


@pytest.fixture
def tmp_image_dir(tmp_path: Path) -> Path:
    """A folder of 10 small PNGs in mixed modes (RGB, L, RGBA, P) and sizes."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    modes = ["RGB", "L", "RGBA", "P", "RGB", "L", "RGBA", "P", "RGB", "RGB"]
    for i, mode in enumerate(modes):
        w, h = 24 + 4 * i, 32 + 2 * (i % 3)
        rgb = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")
        if mode == "RGBA":
            alpha = Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), mode="L")
            image = rgb.copy()
            image.putalpha(alpha)
        elif mode == "P":
            image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        else:
            image = rgb.convert(mode)
        image.save(folder / f"img_{i:02d}_{mode}.png")
    return folder


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Forget loaded plugins before and after the test.

    Yields the ``monkeypatch`` fixture, so changes to ``sys.path`` (``syspath_prepend``)
    and to environment variables (``setenv``) made through it are undone before the
    final reset. ``EMBEDKIT_LOAD_PLUGINS`` is cleared so every plugin loads unless the
    test says otherwise.
    """
    monkeypatch.delenv("EMBEDKIT_LOAD_PLUGINS", raising=False)
    embedkit.plugins.reset_plugins()
    yield monkeypatch
    monkeypatch.undo()
    embedkit.plugins.reset_plugins()


def write_plugin_dist(
    root: Path,
    module: str,
    source: str,
    entry_name: str,
    dist_name: str | None = None,
    version: str = "0.1",
) -> Path:
    """Write an installed-looking plugin distribution into ``root``.

    Creates ``root/<module>.py`` holding ``source`` and ``root/<dist>-<version>.dist-info``
    with ``METADATA`` and an ``entry_points.txt`` exposing ``module`` in the ``embedkit``
    group under ``entry_name``. Put ``root`` on ``sys.path`` to "install" it.
    """
    root.mkdir(parents=True, exist_ok=True)
    dist_name = dist_name or module
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist_name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n"
    )
    (info / "entry_points.txt").write_text(f"[embedkit]\n{entry_name} = {module}\n")
    return root


@pytest.fixture
def install_plugin(
    fresh_plugins: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Path]]:
    """Factory: ``install_plugin(module, source, entry_name)`` installs a plugin for this test.

    Each call writes into its own folder and prepends it to ``sys.path``, so the plugin
    installed last is discovered first. Plugins are reset after each install (call the
    ``embedkit`` APIs afterwards); the modules are dropped from ``sys.modules`` and
    ``sys.path`` is restored when the test ends.
    """
    monkeypatch = fresh_plugins
    modules: list[str] = []

    def install(module: str, source: str, entry_name: str, **kwargs) -> Path:
        root = write_plugin_dist(
            tmp_path / f"site{len(modules)}", module, source, entry_name, **kwargs
        )
        modules.append(module)
        sys.modules.pop(module, None)
        monkeypatch.syspath_prepend(str(root))
        embedkit.plugins.reset_plugins()
        return root

    yield install
    for module in modules:
        sys.modules.pop(module, None)


EKTEST_SOURCE = '''
"""A test plugin: the mean colour of an image, as an exact name and as a prefix."""

import numpy as np
import torch
from PIL import Image

from embedkit import Backbone, BackboneInfo, hookimpl


class MeanColor(Backbone):
    """Mean RGB (times ``scale``) of the image resized to ``size`` x ``size``."""

    def __init__(self, name="ektest", size=8, scale=1.0, device=None, autocast=True):
        super().__init__(device=device, autocast=autocast)
        self._name, self.size, self.scale = name, int(size), float(scale)
        self.model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.seen = []

    @property
    def info(self):
        return BackboneInfo(name=self._name, dim=3, config={"size": self.size})

    def preprocess(self, image):
        small = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255).permute(2, 0, 1)

    def forward(self, batch):
        self.seen.append((torch.is_inference_mode_enabled(), batch.device.type, batch.shape))
        return self.model(batch) * self.scale


def scaled(rest, **options):
    return MeanColor(name="ekscale/" + rest, scale=float(rest), **options)


@hookimpl
def register_backbones(register):
    register("ektest", MeanColor, description="mean colour (test plugin)")
    register(
        "ekscale/", scaled, description="mean colour times a factor (test plugin)", options=["size"]
    )
'''


@pytest.fixture
def ektest_plugin(install_plugin: Callable[..., Path]) -> Path:
    """Installs ``ek_testplugin`` (entry point ``ektest``): backbones ``ektest``, ``ekscale/``."""
    return install_plugin("ek_testplugin", EKTEST_SOURCE, "ektest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_vae(tmp_path_factory) -> SimpleNamespace:
    """A VAE really trained once per session on 3500 images of the 32px shapes corpus
    (about 80 s on one CPU thread); the last 500 images are never seen in training.

    Fields: root (corpus folder), labels, paths, run (run folder), result (TrainResult),
    backbone, images ([N, 3, 32, 32] in [0, 1]), latents ([N, 32]), n_train.
    """
    from embedkit_vae import train

    from embedkit.images.corpus import make_shapes, read_labels
    from embedkit.images.decode import load_images

    n_corpus, n_held_out = 4000, 500
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=n_corpus, size=32, seed=0)
    labels = read_labels(root)
    paths = [root / p for p in labels["path"]]
    run = tmp_path_factory.mktemp("quality") / "vae"
    result = train(
        paths[: n_corpus - n_held_out],
        run,
        "vae",
        latent_dim=32,
        image_size=32,
        epochs=25,
        batch_size=32,
        lr=2e-3,
        beta=1.0,
        seed=0,
        patience=5,
        progress=False,
    )
    backbone = embedkit.load_backbone(f"vae:{run}", device="cpu")
    images = load_images(paths).float() / 255
    latents = backbone.encode(images).numpy()
    return SimpleNamespace(
        root=root,
        labels=labels,
        paths=paths,
        run=run,
        result=result,
        backbone=backbone,
        images=images,
        latents=latents,
        n_train=n_corpus - n_held_out,
    )
