"""The Backbone base class: device placement, encode/decode, BackboneInfo."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from embedkit import Backbone, BackboneError, BackboneInfo, EmbedkitError
from embedkit.device import autocast_for, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


class Recorder(Backbone):
    """forward returns float64 ``[B, 2, 2]`` features: 4 corner pixels of channel 0."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.model = torch.nn.Conv2d(3, 1, 1)
        self.model.train()
        self.calls = []

    @property
    def info(self):
        return BackboneInfo(name="recorder", dim=4, config={"k": 1})

    def preprocess(self, image):
        self.calls.append(("preprocess", image.mode, image.size))
        arr = np.asarray(image.resize((4, 4)), dtype=np.float32) / 255
        return torch.from_numpy(arr).permute(2, 0, 1)

    def forward(self, batch):
        self.calls.append(
            ("forward", torch.is_inference_mode_enabled(), batch.device.type, tuple(batch.shape))
        )
        return batch[:, 0, ::3, ::3].double()


class Decoder(Recorder):
    can_decode = True

    @property
    def info(self):
        return BackboneInfo(name="decoder", dim=4)

    def forward_decode(self, latents):
        self.calls.append(("decode", torch.is_inference_mode_enabled(), tuple(latents.shape)))
        # image [B, 3, 2, 2]: each channel is the latents laid out 2x2, scaled by 1, 2, 3
        grid = latents.reshape(-1, 1, 2, 2)
        return torch.cat([grid, 2 * grid, 3 * grid], dim=1)


@pytest.fixture
def no_env_device(monkeypatch):
    monkeypatch.delenv("EMBEDKIT_DEVICE", raising=False)


# -- device resolution ---------------------------------------------------------------------


@no_cuda
def test_default_device_is_cpu_here(no_env_device):
    if torch.backends.mps.is_available():
        pytest.skip("MPS machine")
    assert resolve_device() == torch.device("cpu")
    assert Recorder().device == torch.device("cpu")


def test_explicit_devices(no_env_device):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(BackboneError) as err:
        resolve_device("tpu-ish")
    assert str(err.value) == "unknown device 'tpu-ish': use cpu, cuda, cuda:N or mps"


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_line_error(no_env_device, device):
    with pytest.raises(BackboneError) as err:
        Recorder(device=device)
    message = str(err.value)
    assert message == f"device {device!r} asked for but CUDA is not available; use cpu"
    assert isinstance(err.value, EmbedkitError)


@no_cuda
def test_embedkit_device_env(monkeypatch):
    monkeypatch.setenv("EMBEDKIT_DEVICE", "cpu")
    assert Recorder().device == torch.device("cpu")
    monkeypatch.setenv("EMBEDKIT_DEVICE", "cuda")
    with pytest.raises(BackboneError, match="CUDA is not available"):
        Recorder()
    # an explicit device beats the environment
    assert Recorder(device="cpu").device == torch.device("cpu")
    monkeypatch.setenv("EMBEDKIT_DEVICE", "")
    assert resolve_device() == resolve_device(None)
    monkeypatch.setenv("EMBEDKIT_DEVICE", "nonsense")
    with pytest.raises(BackboneError, match="unknown device 'nonsense'"):
        resolve_device()


@no_cuda
def test_to_moves_and_validates(no_env_device):
    backbone = Recorder(device="cpu")
    assert backbone.to("cpu") is backbone
    with pytest.raises(BackboneError, match="CUDA is not available"):
        backbone.to("cuda")


def test_autocast_is_a_noop_off_cuda():
    assert isinstance(autocast_for(torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(autocast_for(torch.device("cuda"), enabled=False), contextlib.nullcontext)


# -- BackboneInfo ----------------------------------------------------------------------------


def test_backbone_info_json_round_trip():
    info = BackboneInfo(
        name="timm/resnet18",
        dim=960,
        config={"layers": [1, 2, 3, 4], "pretrained": False, "weights": None, "s": "x"},
    )
    text = info.to_json()
    assert json.loads(text) == {
        "name": "timm/resnet18",
        "dim": 960,
        "dtype": "float32",
        "config": {"layers": [1, 2, 3, 4], "pretrained": False, "weights": None, "s": "x"},
        "identity": {},
    }
    assert list(json.loads(text)) == ["config", "dim", "dtype", "identity", "name"]  # sorted
    assert BackboneInfo.from_json(text) == info
    assert BackboneInfo.from_json(text.encode()) == info
    minimal = BackboneInfo.from_json('{"name": "x", "dim": "7", "config": null}')
    assert minimal == BackboneInfo(name="x", dim=7, dtype="float32", config={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.dim = 3


# -- encode / decode -------------------------------------------------------------------------


def test_encode_is_float32_cpu_2d_under_inference_mode(no_env_device):
    backbone = Recorder(device="cpu")
    assert backbone.model.training
    batch = torch.rand(3, 3, 4, 4)
    out = backbone.encode(batch)
    assert out.shape == (3, 4)
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert not out.requires_grad
    assert not backbone.model.training  # put in eval mode before encoding
    assert backbone.calls == [("forward", True, "cpu", (3, 3, 4, 4))]
    expected = batch[:, 0, ::3, ::3].reshape(3, 4)
    torch.testing.assert_close(out, expected)
    # a single [C, H, W] image becomes a batch of one
    assert backbone.encode(batch[0]).shape == (1, 4)
    assert (backbone.name, backbone.dim) == ("recorder", 4)
    assert repr(backbone) == "<Recorder recorder dim=4 device=cpu>"


def test_encode_images_converts_every_mode_to_rgb(tmp_image_dir):
    paths = sorted(tmp_image_dir.glob("*.png"))
    images = [Image.open(p) for p in paths]
    assert {im.mode for im in images} == {"RGB", "L", "RGBA", "P"}
    backbone = Recorder(device="cpu")
    out = backbone.encode_images(images)
    assert out.shape == (10, 4)
    assert out.dtype == torch.float32
    assert [c[1] for c in backbone.calls if c[0] == "preprocess"] == ["RGB"] * 10
    first = np.asarray(images[0].convert("RGB").resize((4, 4)), dtype=np.float32)[::3, ::3, 0]
    np.testing.assert_allclose(out[0].numpy(), first.reshape(-1) / 255, atol=1e-6)


def test_decode_on_non_decoder_is_backbone_error():
    backbone = Recorder(device="cpu")
    assert backbone.can_decode is False
    for call in (backbone.decode, backbone.decode_images, backbone.forward_decode):
        with pytest.raises(BackboneError) as err:
            call(torch.zeros(1, 4))
        assert str(err.value) == "backbone 'recorder' has no decoder; use an ae:/vae: backbone"


def test_decode_clamps_and_returns_float32_cpu():
    backbone = Decoder(device="cpu")
    latents = np.array([[0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 0.5, 1.0]], dtype=np.float64)
    images = backbone.decode(latents)
    assert images.shape == (2, 3, 2, 2)
    assert images.dtype == torch.float32
    assert backbone.calls == [("decode", True, (2, 4))]
    expected = torch.tensor(latents, dtype=torch.float32).reshape(2, 1, 2, 2)
    expected = torch.cat([expected, 2 * expected, 3 * expected], dim=1).clamp(0, 1)
    torch.testing.assert_close(images, expected)
    assert backbone.decode(torch.tensor([0.1, 0.2, 0.3, 0.4])).shape == (1, 3, 2, 2)

    pil = backbone.decode_images(latents[:1])
    assert len(pil) == 1 and pil[0].mode == "RGB" and pil[0].size == (2, 2)
    # pixel (0, 0) of image 0: latent 0.1 -> channels 0.1, 0.2, 0.3
    assert pil[0].getpixel((0, 0)) == (26, 51, 76)

    with pytest.raises(BackboneError) as err:
        backbone.decode(torch.zeros(2, 5))
    assert str(err.value) == "latents have dim 5, backbone 'decoder' decodes dim 4"
