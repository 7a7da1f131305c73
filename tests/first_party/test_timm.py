"""The timm backbone: dims, layers, local weights (safely), preprocessing, errors. Offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from embedkit_timm import TimmBackbone
from PIL import Image
from safetensors.torch import save_file

import embedkit
from embedkit import BackboneError, BackboneNotFound


def load(name: str, **options) -> TimmBackbone:
    options.setdefault("pretrained", False)
    options.setdefault("device", "cpu")
    backbone = embedkit.load_backbone(f"timm/{name}", **options)
    assert isinstance(backbone, TimmBackbone)
    return backbone


@pytest.fixture
def batch() -> torch.Tensor:
    """Two small preprocessed-looking images: CNNs pool over any spatial size."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# -- dims --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "dim"), [("resnet18", 512), ("efficientnet_b0", 1280), ("convnext_tiny", 768)]
)
def test_pooled_dims_match_encode_output(model, dim, rng_images):
    backbone = load(model)
    assert backbone.dim == dim
    assert backbone.info.name == f"timm/{model}"
    assert backbone.info.config == {"pretrained": False, "weights": None, "layers": None}
    out = backbone.encode_images(rng_images[:2])
    assert out.shape == (2, dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.std() > 0


@pytest.mark.parametrize(
    ("layers", "chosen", "dim"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 64 + 128 + 256 + 512),
        ("2,3", [2, 3], 128 + 256),
        ("4", [4], 512),
        ([-1], [4], 512),
        (-2, [3], 256),
        ([-1, 4, 0], [0, 4], 64 + 512),  # duplicates collapse, sorted
    ],
)
def test_multi_layer_dims(layers, chosen, dim, batch):
    backbone = load("resnet18", layers=layers)
    assert backbone.dim == dim
    assert backbone.info.config["layers"] == chosen
    assert backbone.encode(batch).shape == (2, dim)


def test_multi_layer_values_are_pooled_stages(batch):
    torch.manual_seed(0)
    pooled = load("resnet18")
    torch.manual_seed(0)
    stages = load("resnet18", layers=[3, 4])
    torch.manual_seed(0)
    stage3 = load("resnet18", layers=[3])
    a, b, c = pooled.encode(batch), stages.encode(batch), stage3.encode(batch)
    # resnet's pre-logits are the global average pool of the last stage
    torch.testing.assert_close(b[:, 256:], a)
    torch.testing.assert_close(b[:, :256], c)
    m = pooled.model
    with torch.no_grad():
        stem = m.maxpool(m.act1(m.bn1(m.conv1(batch))))
        expected = m.layer3(m.layer2(m.layer1(stem))).mean(dim=(2, 3))
    torch.testing.assert_close(c, expected)


@pytest.mark.parametrize(
    ("layers", "fragment"),
    [
        ([5], "layers= index 5 is out of range"),
        ([1, -6], "layers= index -6 is out of range"),
        ("1,x", "layers= entry 'x' is not an integer"),
        ([], "layers= is empty"),
    ],
)
def test_bad_layers_is_one_line_error_naming_the_range(layers, fragment):
    with pytest.raises(BackboneError) as err:
        load("resnet18", layers=layers)
    message = assert_one_line(err)
    assert message.startswith(fragment)
    assert message.endswith("valid: 0..4 or -5..-1 (stages of resnet18)")


# -- local weights -----------------------------------------------------------------------------


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip(tmp_path, suffix, batch):
    source = timm.create_model("resnet18", pretrained=False).eval()
    path = save_weights(source, tmp_path / f"resnet18{suffix}")

    # pretrained defaults to True, but a weights file means nothing is fetched
    first = embedkit.load_backbone("timm/resnet18", weights=path, device="cpu")
    second = load("resnet18", weights=str(path))
    random = load("resnet18")
    assert first.info.config == {
        "pretrained": False,
        "weights": str(path.resolve()),
        "layers": None,
    }
    assert first.info == second.info

    a, b, r = first.encode(batch), second.encode(batch), random.encode(batch)
    assert torch.equal(a, b)
    assert not torch.allclose(a, r)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(batch), pre_logits=True)
    torch.testing.assert_close(a, expected)

    # the info alone rebuilds the same backbone
    assert torch.equal(embedkit.load_backbone(first.info).encode(batch), a)


def test_wrapped_torch_checkpoint_is_unwrapped(tmp_path, batch):
    source = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "ckpt.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(batch), pre_logits=True)
    torch.testing.assert_close(load("resnet18", weights=path).encode(batch), expected)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(BackboneError) as err:
        load("resnet18", weights=missing)
    assert assert_one_line(err) == (
        f"weights file {missing} does not exist; pass an existing .safetensors or .pth file"
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_corrupt_weights_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a weights file\n" * 40)
    with pytest.raises(BackboneError) as err:
        load("resnet18", weights=path)
    message = assert_one_line(err)
    assert message.startswith(f"weights file {path} is corrupt or not a weights file (")
    assert message.endswith("expected a safetensors file or a torch state dict")


def test_weights_of_another_architecture(tmp_path):
    path = save_weights(
        timm.create_model("resnet18", pretrained=False), tmp_path / "r18.safetensors"
    )
    with pytest.raises(BackboneError) as err:
        load("resnet34", weights=path)
    message = assert_one_line(err)
    assert message.startswith(f"weights file {path} does not fit architecture 'resnet34': ")
    assert "missing (e.g. layer1.2." in message
    assert message.endswith("use weights saved from that model")


def test_non_tensor_state_is_refused(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"a": 1, "b": [2, 3]}, path)
    with pytest.raises(BackboneError) as err:
        load("resnet18", weights=path)
    assert assert_one_line(err) == f"weights file {path} holds no state dict of tensors"


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload(marker), "conv1.weight": torch.zeros(1)}, path)
    assert not marker.exists()

    with pytest.raises(BackboneError) as err:
        load("resnet18", weights=path)
    message = assert_one_line(err)
    assert message.startswith(f"weights file {path} contains pickled Python objects, refused")
    assert not marker.exists(), "the pickled payload ran while loading weights"

    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.is_dir()


# -- preprocessing -----------------------------------------------------------------------------


def assert_same_input(ours: torch.Tensor, want: torch.Tensor, std: float = 0.224) -> None:
    """Equal up to the fused resize's rounding: at most 2 in 255, in under 0.5 % of the
    values."""
    step = 1 / 255 / std
    diff = (ours - want).abs()
    assert diff.max() <= 2 * step + 1e-5
    assert (diff > 1e-5).float().mean() < 0.005


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_b0"])
def test_preprocess_matches_timm_transform(model):
    backbone = load(model)
    reference_model = timm.create_model(model, pretrained=False)
    config = timm.data.resolve_model_data_config(reference_model)
    transform = timm.data.create_transform(**config, is_training=False)

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8), mode="RGB")
    ours = backbone.preprocess(image)
    assert ours.shape == (3, *config["input_size"][1:])
    # workers send uint8 (4x fewer bytes); the model's process finishes the transform
    assert ours.dtype == torch.uint8
    assert_same_input(backbone.finish_preprocess(ours[None])[0], transform(image))
    # non-RGB input is converted first
    gray = image.convert("L")
    finished = backbone.finish_preprocess(backbone.preprocess(gray)[None])[0]
    assert_same_input(finished, transform(gray.convert("RGB")))
    # and encode() accepts the uint8 batch as it is
    batch = torch.stack([backbone.preprocess(image), backbone.preprocess(gray)])
    floats = torch.stack([backbone.finish_preprocess(batch[i : i + 1])[0] for i in range(2)])
    torch.testing.assert_close(backbone.encode(batch), backbone.encode(floats))


# -- errors ------------------------------------------------------------------------------------


def test_unknown_timm_model_suggests_close_matches():
    with pytest.raises(BackboneNotFound) as err:
        load("efficientnet-b0")
    message = assert_one_line(err)
    assert message.startswith("unknown timm model 'efficientnet-b0'; did you mean: ")
    suggestions = message.split("did you mean: ")[1].split("?")[0].split(", ")
    assert "timm/efficientnet_b0" in suggestions
    assert message.endswith("see timm.list_models() for every name")

    with pytest.raises(BackboneNotFound) as err:
        TimmBackbone("zzzz_qqqq_not_a_model", pretrained=False)
    assert "did you mean" not in assert_one_line(err)


def test_pretrained_without_network_fails_fast_with_a_hint():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest
    start = time.perf_counter()
    with pytest.raises(BackboneError) as err:
        embedkit.load_backbone("timm/resnet18", pretrained=True, device="cpu")
    elapsed = time.perf_counter() - start
    message = assert_one_line(err)
    assert message.startswith("could not fetch pretrained weights for timm/resnet18 (")
    assert "pass weights=FILE" in message
    assert "pretrained=False" in message
    assert elapsed < 30, f"offline pretrained load took {elapsed:.1f}s"


# -- CUDA ------------------------------------------------------------------------------------


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@pytest.mark.gpu
def test_cuda_uses_channels_last_and_autocast_but_returns_float32_cpu(batch):
    torch.manual_seed(0)
    reference = load("resnet18", device="cpu")
    expected = reference.encode(batch)
    for autocast, min_cosine in [(True, 0.99), (False, 0.9999)]:
        torch.manual_seed(0)
        backbone = load("resnet18", device="cuda", autocast=autocast)
        out = backbone.encode(batch)
        assert out.device.type == "cpu"
        assert out.dtype == torch.float32
        assert out.shape == (2, 512)
        assert backbone.model.conv1.weight.is_cuda
        assert backbone.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert cosine(out, expected).min() > min_cosine


def test_random_weights_are_the_same_in_every_process():
    # seeded by the model name: latents made with pretrained=False can be queried by image
    # from another process, and Ray actors agree with each other
    code = (
        "import warnings, embedkit; warnings.simplefilter('ignore');"
        "b = embedkit.load_backbone('timm/resnet18', pretrained=False, device='cpu');"
        "print(b.weights_digest()); print(b.identified_info().identity['weights_origin'])"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    digests = [r.stdout.split() for r in runs]
    assert digests[0] == digests[1] and digests[0][1].startswith("random:seed=")


def test_random_weights_say_they_are_for_timing_only():
    with pytest.warns(UserWarning, match="random weights .*not as features"):
        embedkit.load_backbone("timm/resnet18", pretrained=False, device="cpu")


def test_seeded_weights_hold_while_another_thread_builds_models():
    """Random weights seeded by name come out the same while another thread builds models
    from torch's global generator (the explorer loads its backbone in the background)."""
    import threading

    from embedkit.plugins import model_building

    want = load("resnet18").weights_digest()
    stop = threading.Event()

    def build_others() -> None:
        while not stop.is_set():
            with model_building():
                torch.nn.Linear(256, 256)

    other = threading.Thread(target=build_others, daemon=True)
    other.start()
    try:
        digests = {load("resnet18").weights_digest() for _ in range(3)}
    finally:
        stop.set()
        other.join()
    assert digests == {want}
