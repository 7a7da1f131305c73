"""Per-stage widths: ``BackboneInfo.segments``, filled by the timm backbones with
``layers=``, kept through the dataset metadata, ignored by the latent-space check; and
the probe's blocks made from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embedkit
from embedkit import BackboneInfo, write_latents
from embedkit.probes.blocks import vector_blocks

STAGES = (("stage1", 3), ("stage2", 5))


def test_segments_round_trip_and_are_left_out_when_empty():
    info = BackboneInfo("toy", 8, config={"layers": [1, 2]}, segments=STAGES)
    assert BackboneInfo.from_json(info.to_json()) == info
    assert json.loads(info.to_json())["segments"] == [["stage1", 3], ["stage2", 5]]
    plain = BackboneInfo("toy", 8, config={"layers": [1, 2]})
    # byte for byte what datasets written before segments existed hold
    assert plain.to_json() == (
        '{"config": {"layers": [1, 2]}, "dim": 8, "dtype": "float32", "identity": {}, '
        '"name": "toy"}'
    )
    assert BackboneInfo.from_json(plain.to_json()).segments == ()


def test_segments_are_not_part_of_the_latent_space():
    with_segments = BackboneInfo("toy", 8, segments=STAGES)
    assert with_segments.differences(BackboneInfo("toy", 8)) == []
    assert with_segments.compatible_with(BackboneInfo("toy", 8))
    assert not with_segments.compatible_with(BackboneInfo("toy", 8, config={"layers": [3]}))


def test_datasets_keep_segments_and_old_ones_still_append(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    new = write_latents(
        tmp_path / "new", list("abcdef"), x, BackboneInfo("toy", 8, segments=STAGES)
    )
    assert embedkit.open_latents(new).backbone.segments == STAGES
    old = write_latents(tmp_path / "old", list("abc"), x[:3], BackboneInfo("toy", 8))
    write_latents(old, list("def"), x[3:], BackboneInfo("toy", 8, segments=STAGES))
    reopened = embedkit.open_latents(old)
    assert len(reopened) == 6 and reopened.backbone.segments == ()  # the first part's meta


def test_timm_records_the_width_of_each_chosen_stage():
    backbone = embedkit.load_backbone(
        "timm/efficientnet_lite0", pretrained=False, layers=[3, 1], device="cpu"
    )
    assert backbone.info.segments == (("stage1", 24), ("stage3", 112))
    assert backbone.info.dim == 136
    assert backbone.identified_info().segments == backbone.info.segments
    pooled = embedkit.load_backbone("timm/efficientnet_lite0", pretrained=False, device="cpu")
    assert pooled.info.segments == ()


def test_the_packaged_backbone_keeps_the_segments():
    backbone = embedkit.load_backbone("pretrained/efficientnet_lite0", layers=[0, 4], device="cpu")
    assert backbone.info.name == "pretrained/efficientnet_lite0"
    assert backbone.info.segments == (("stage0", 16), ("stage4", 320))


def test_blocks_are_each_segment_then_the_whole_vector():
    blocks = vector_blocks(BackboneInfo("toy", 8, segments=STAGES), 8)
    assert [(b.name, b.start, b.stop) for b in blocks] == [
        ("stage1", 0, 3),
        ("stage2", 3, 8),
        ("all", 0, 8),
    ]
    x = np.arange(16).reshape(2, 8)
    assert blocks[1].of(x).tolist() == [[3, 4, 5, 6, 7], [11, 12, 13, 14, 15]]
    assert [b.name for b in vector_blocks(BackboneInfo("toy", 8), 8)] == ["all"]
    one = vector_blocks(BackboneInfo("toy", 3, segments=(("stage2", 3),)), 3)
    assert [(b.name, b.width) for b in one] == [("stage2", 3)]


def test_segments_that_do_not_add_up_are_one_block_with_a_warning():
    info = BackboneInfo("odd", 9, segments=STAGES)
    with pytest.warns(UserWarning, match="do not add up to its dim 9"):
        assert [b.name for b in vector_blocks(info, 9)] == ["all"]
