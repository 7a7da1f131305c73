"""Latent arithmetic measured on a VAE really trained on the built-in corpus (conftest's
``trained_vae``): attribute vectors move decoded images toward the attribute."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import embedkit
from embedkit.algebra import apply_vector, attribute_vector, interpolate
from embedkit.images.corpus import color_of
from embedkit.index.search import neighbors
from embedkit.viz.pictures import attribute_sweep, interpolation_strip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def latents(trained_vae, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae-latents")
    embedkit.embed(
        trained_vae.root / "labels.parquet",
        f"vae:{trained_vae.run}",
        out,
        num_workers=0,
        progress=False,
    )
    return embedkit.open_latents(out)


@pytest.fixture(scope="module")
def split(trained_vae):
    ids = trained_vae.labels["id"].astype(str).tolist()
    return ids[: trained_vae.n_train], ids[trained_vae.n_train :]


def _held_out_blue(latents, split) -> list[str]:
    frame = latents.filter(id=split[1], color="blue").to_pandas(["id"], embedding=False)
    return frame["id"].tolist()


def test_embedded_latents_equal_the_backbone_encoding(latents, trained_vae):
    stored = latents.to_numpy()
    order = [int(i) for i in latents.ids()]
    expected = trained_vae.latents[order]
    # the pipeline decodes PNGs itself; the fixture used load_images: same pixels
    assert np.allclose(stored, expected, atol=1e-4)


def test_red_minus_blue_turns_held_out_blue_shapes_red(latents, split, trained_vae):
    vector = attribute_vector(latents.filter(id=split[0]), "color", positive="red", negative="blue")
    blue = _held_out_blue(latents, split)
    assert len(blue) > 80
    z = latents.filter(id=blue).to_numpy()
    backbone = trained_vae.backbone
    before = [color_of(im) for im in backbone.decode_images(z)]
    after = [
        color_of(im)
        for im in backbone.decode_images(apply_vector(z, vector, 1.0, backbone=latents.backbone))
    ]
    turned = float(np.mean([c == "red" for c in after]))
    print(f"red edit: {turned:.3f} of {len(blue)} held-out blue images decode red")
    assert np.mean([c == "blue" for c in before]) >= 0.9  # they start blue
    assert turned >= 0.8


def test_binary_attribute_vector_separates_held_out_rows(latents):
    vector = attribute_vector(latents, "filled")
    print(f"filled: auc {vector.auc:.3f} d {vector.cohens_d:.2f}")
    assert vector.auc > 0.9
    assert vector.n_positive + vector.n_negative == len(latents)


def test_edit_retrieved_as_nearest_neighbours_for_any_backbone(latents, split):
    vector = attribute_vector(latents.filter(id=split[0]), "color", positive="red", negative="blue")
    blue = _held_out_blue(latents, split)
    z = apply_vector(latents.filter(id=blue).to_numpy(), vector, 1.0)
    found = neighbors(latents, vectors=z, k=1, metric="l2")
    red = float((found["color"] == "red").mean())
    print(f"nearest neighbour of the edited latent is red for {red:.3f}")
    assert red >= 0.8


def test_interpolation_decodes_from_one_image_to_the_other(latents, trained_vae, split):
    a, b = split[1][0], split[1][1]
    za, zb = (latents.filter(id=i).to_numpy()[0] for i in (a, b))
    for method in ("lerp", "slerp"):
        path = interpolate(za, zb, 6, method)
        decoded = trained_vae.backbone.decode(path).numpy()
        ends = trained_vae.backbone.decode(np.stack([za, zb])).numpy()
        assert np.allclose(decoded[0], ends[0], atol=1e-5)
        assert np.allclose(decoded[-1], ends[1], atol=1e-5)
        # the strip moves monotonically away from the start image, on the whole
        distance = [float(((d - ends[0]) ** 2).mean()) for d in decoded]
        assert distance[-1] > distance[2] > distance[0]


def test_sweep_and_strip_pictures(latents, split, tmp_path):
    vector = attribute_vector(latents, "filled")
    ids = split[1][:3]
    grid = attribute_sweep(
        latents, vector, ids, (-1, 0, 1), mode="decode", out=tmp_path / "sweep.png", cell=48
    )
    assert Image.open(tmp_path / "sweep.png").size == grid.size
    assert grid.width > 4 * 48 and grid.height > 3 * 48
    strip = interpolation_strip(
        latents, ids[0], ids[1], steps=5, out=tmp_path / "strip.png", cell=48
    )
    assert strip.height > 2 * 48  # lerp and slerp rows
