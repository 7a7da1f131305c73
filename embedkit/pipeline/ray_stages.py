"""The Ray engine's plan up to the vectors: the input blocks, decode tasks (load_image +
preprocess; a copy of the backbone without its weights) and a pool of encoder actors (one
model each, sized by the resource plan). What runs on the workers is :mod:`.ray_udfs`."""

from __future__ import annotations

import copy
import math
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from embedkit.errors import BackboneError
from embedkit.pipeline.ray_cluster import task_pool
from embedkit.pipeline.ray_udfs import Encoder, Pickled, decode_rows
from embedkit.pipeline.steps import EmbedOptions, default_batch_size
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.info import BackboneInfo

__all__ = ["encoded_dataset"]

#: rows per input block: enough blocks to keep every decode slot busy, few enough to be cheap
MAX_BLOCK_ROWS = 4096
#: host memory an actor reserves beyond its weights (measured: ~0.6 GiB with torch, ~1.3 GiB
#: running timm/resnet18 at batch 32)
ACTOR_MEMORY_SLACK = 3 << 29
_PROBE = Image.new("RGB", (64, 64), (128, 96, 64))


def _preprocessor(backbone: Backbone) -> tuple[Backbone, tuple[int, ...], np.dtype]:
    """What decode tasks get: a copy of ``backbone`` without its model when that preprocesses
    alike (so weights are not shipped to every task), and the shape/dtype of one image."""
    try:
        want = backbone.preprocess(_PROBE)
    except Exception as exc:
        raise BackboneError(
            f"backbone {backbone.name!r} cannot preprocess a 64x64 RGB image ({exc})"
        ) from exc
    light = copy.copy(backbone)
    try:
        light.model = None
        same = torch.equal(light.preprocess(_PROBE), want)
    except Exception:  # preprocess needs the model after all: ship the whole backbone
        same = False
    dtype = want.numpy().dtype
    return (light if same else backbone), tuple(want.shape), dtype


def _model_bytes(backbone: Backbone) -> int:
    """Bytes of the backbone's weights and buffers (0 without a torch model)."""
    if backbone.model is None:
        return 0
    tensors = [*backbone.model.parameters(), *backbone.model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def encoded_dataset(
    ray: ModuleType,
    rows: pa.Table,
    backbone: Backbone,
    shipped: Backbone | None,
    plan: dict[str, Any],
    options: EmbedOptions,
    info: BackboneInfo,
) -> Any:
    """The Ray Dataset of encoded batches of ``rows`` (lazy): their columns plus
    ``embedding``, ``error``, ``fatal``, ``size``, ``mtime``."""
    batch_size = options.batch_size or default_batch_size(plan["device"].split(":")[0])
    preprocess, shape, pixel_dtype = _preprocessor(backbone)
    slots = max(1, int(plan["cpus"]) * 4)
    block = min(MAX_BLOCK_ROWS, max(batch_size, math.ceil(rows.num_rows / slots)))
    blocks = [rows.slice(i, block) for i in range(0, rows.num_rows, block)]
    data = ray.data.from_arrow(blocks).map_batches(
        decode_rows,
        batch_size=batch_size,
        batch_format="pyarrow",
        fn_kwargs={
            "preprocessor": Pickled(preprocess),
            "shape": shape,
            "dtype": pixel_dtype,
            "decode_size": backbone.decode_size,
        },
        num_cpus=plan["decode_cpus"],
        **task_pool(ray, options.num_workers),
    )
    return data.map_batches(
        Encoder,
        batch_size=batch_size,
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "info": info,
            "device": plan["device"],
            "normalize": options.normalize,
            "threads": max(1, int(plan["actor_cpus"])),
            "shape": shape,
            "shipped": Pickled(shipped) if shipped is not None else None,
        },
        num_cpus=plan["actor_cpus"],
        num_gpus=plan["gpus_per_actor"],
        # host memory for one model; resources that differ from the decode tasks' also
        # keep Ray Data from fusing decoding into the actors (it must run beside them)
        memory=_model_bytes(backbone) + ACTOR_MEMORY_SLACK,
        compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
    )
