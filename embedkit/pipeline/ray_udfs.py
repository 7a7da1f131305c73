"""What Ray Data runs on the workers for the Ray engine: the decode task (load_image +
preprocess) and the encoder actor (one model), over the Arrow rows of :mod:`.ray_rows`,
which they pass through with pixels, then vectors, added.

Nothing heavy is imported when this module loads, and backbones travel as pickled bytes
(:class:`Pickled`): Ray Data's split coordinator unpickles the whole plan only to route
its blocks, and would otherwise import torch (~3 s on 2 busy cores) before it starts the
pipeline. The workers import what they use when they first run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedkit.errors import EmbedkitError
from embedkit.pipeline.ray_rows import fixed_list, fixed_list_numpy, good_rows
from embedkit.plugins.info import BackboneInfo

if TYPE_CHECKING:
    from embedkit.plugins.backbone import Backbone

__all__ = ["Encoder", "Pickled", "decode_rows"]


class Pickled:
    """An object as cloudpickle bytes, unpickled once per process on first :meth:`get`."""

    def __init__(self, value: Any):
        from ray import cloudpickle  # by value where the caller registered it so

        self.payload = cloudpickle.dumps(value)
        self._value: Any = None

    def get(self) -> Any:
        if self._value is None:
            from ray import cloudpickle

            self._value = cloudpickle.loads(self.payload)
        return self._value

    def __getstate__(self) -> dict:
        return {"payload": self.payload, "_value": None}


def decode_rows(
    batch: pa.Table,
    preprocessor: Pickled,
    shape: tuple[int, ...],
    dtype: np.dtype,
    decode_size: int | None = None,
) -> pa.Table:
    """A Ray task: the rows plus their preprocessed pixels, file stats and ``error`` (an
    unreadable image's reason); a failing ``preprocess`` is flagged ``fatal``."""
    from embedkit.pipeline.decode import ImageDataset, collate, worker_init

    worker_init()
    preprocess: Callable = preprocessor.get().preprocess
    images = ImageDataset(batch.column("path").to_pylist(), preprocess, decode_size)
    decoded = collate([images[i] for i in range(len(images))])
    n = len(images)
    pixels = np.zeros((n, math.prod(shape)), dtype=dtype)
    size, mtime = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if decoded.indices:
        pixels[decoded.indices] = decoded.tensor.numpy().reshape(len(decoded.indices), -1)
        size[decoded.indices], mtime[decoded.indices] = decoded.stats
    errors = [""] * n
    fatal = np.zeros(n, dtype=bool)
    for i, reason in decoded.errors:
        errors[i] = reason
    if decoded.plugin_failure is not None:
        index, reason = decoded.plugin_failure
        errors[index], fatal[index] = reason, True
    added = {"pixels": fixed_list(pixels), "error": pa.array(errors, pa.string())}
    added |= {"fatal": pa.array(fatal), "size": pa.array(size), "mtime": pa.array(mtime)}
    for name, column in added.items():
        batch = batch.append_column(name, column)
    return batch


class Encoder:
    """A Ray actor holding one model: pixels -> latents (zeros where decoding failed)."""

    def __init__(
        self,
        info: BackboneInfo,
        device: str,
        normalize: bool,
        threads: int,
        shape: tuple[int, ...],
        shipped: Pickled | None = None,
    ):
        import torch

        from embedkit.plugins.registry import load_backbone

        torch.set_num_threads(threads)
        if shipped is None:
            self.backbone: Backbone = load_backbone(info, device=device)  # checks the digest
        else:
            self.backbone = shipped.get().to(device)
        expected = info.identity.get("precision")
        if expected is not None and self.backbone.precision != expected:
            raise EmbedkitError(
                f"a Ray actor on {device} runs {info.name} in {self.backbone.precision}, "
                f"not {expected} as the dataset records; pass --device or use matching GPUs"
            )
        self.normalize = normalize
        self.dim = info.dim
        self.shape = shape

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from embedkit.pipeline.decode import encode_batch

        good = good_rows(batch)
        vectors = np.zeros((len(good), self.dim), dtype=np.float32)
        if good.any():
            pixels = fixed_list_numpy(batch.column("pixels"))[good]
            pixels = torch.from_numpy(np.ascontiguousarray(pixels).reshape(-1, *self.shape))
            if self.backbone.device.type == "cuda":
                pixels = pixels.pin_memory()
            where = f"a batch of {len(pixels)} images"
            vectors[good] = encode_batch(self.backbone, pixels, where, self.normalize)
        batch = batch.drop_columns(["pixels"])
        return batch.append_column("embedding", fixed_list(vectors))
