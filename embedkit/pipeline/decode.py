"""Decoding inputs for an engine: one image per item (in DataLoader workers or Ray tasks),
batched by :func:`collate`.

Two kinds of failure are kept apart. A file that cannot be decoded (unreadable,
truncated, not an image, a decompression bomb) is recorded in the errors table and
skipped. An exception from the backbone's ``preprocess`` is a bug in a plugin, not a bad
image: it stops the run, naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from embedkit.errors import BackboneError, first_line
from embedkit.images.decode import load_image
from embedkit.location import file_stat
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.registry import provider

__all__ = [
    "DecodedBatch",
    "ImageDataset",
    "collate",
    "encode_batch",
    "plugin_failure",
    "reason_of",
    "worker_init",
]


class Decoded(NamedTuple):
    """One item: a tensor and the file's (size, mtime_ns), or why there is none."""

    index: int
    tensor: torch.Tensor | None
    stat: tuple[int, int] | None
    error: str | None
    plugin_failed: bool = False


class DecodedBatch(NamedTuple):
    """A batch: the decoded indices, their stacked tensors and file stats, the decode
    errors ``[(index, reason)]``, and the first plugin failure ``(index, reason)``."""

    indices: list[int]
    tensor: torch.Tensor | None
    stats: tuple[np.ndarray, np.ndarray]
    errors: list[tuple[int, str]]
    plugin_failure: tuple[int, str] | None


def reason_of(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters."""
    return f"{type(exc).__name__}: {first_line(exc)}"[:300]


class ImageDataset(Dataset):
    """Decodes (the one decoder) and preprocesses one image per item."""

    def __init__(self, paths: list[str], preprocess: Callable, decode_size: int | None = None):
        self.paths = paths
        self.preprocess = preprocess
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        path = self.paths[i]
        try:
            stat = file_stat(path)
            image = load_image(path, self.decode_size)
        except Exception as exc:  # a bad input: recorded, skipped
            return Decoded(i, None, None, reason_of(exc))
        try:
            tensor = self.preprocess(image)
        except Exception as exc:  # the plugin's own failure: the run must stop
            return Decoded(i, None, None, reason_of(exc), plugin_failed=True)
        return Decoded(i, tensor, (stat.st_size, stat.st_mtime_ns), None)


def collate(items: list[Decoded]) -> DecodedBatch:
    """Stack the decoded items of a batch; failures are returned beside them."""
    good = [item for item in items if item.error is None]
    errors = [(item.index, item.error) for item in items if item.error and not item.plugin_failed]
    failed = next(((it.index, it.error) for it in items if it.plugin_failed), None)
    stats = np.asarray([item.stat for item in good], dtype=np.int64).reshape(-1, 2)
    tensor = torch.stack([item.tensor for item in good]) if good else None
    return DecodedBatch(
        [item.index for item in good], tensor, (stats[:, 0], stats[:, 1]), errors, failed
    )


def plugin_failure(backbone_name: str, step: str, where: str, reason: str) -> BackboneError:
    """The one-line error that stops a run when a backbone's code raised."""
    plugin = provider(backbone_name)
    who = f"backbone {backbone_name!r}" + (f" (plugin {plugin!r})" if plugin else "")
    return BackboneError(
        f"{who} failed in {step} on {where}: {reason}; the run stopped and nothing was "
        "written for this batch: a bug in the backbone, not a bad image (embedkit --debug "
        "shows the traceback)"
    )


def encode_batch(
    backbone: Backbone, pixels: torch.Tensor, where: str, normalize: bool
) -> np.ndarray:
    """``backbone.encode`` (L2-normalized if asked) as numpy; its failure is reported as
    the plugin's, in one line, not as a bad image."""
    try:
        vectors = backbone.encode(pixels)
    except Exception as exc:
        raise plugin_failure(backbone.name, "forward", where, reason_of(exc)) from exc
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=1)
    return vectors.numpy()


def worker_init(_: int = 0) -> None:
    """Decode workers use one thread; the main process owns the cores for the model."""
    torch.set_num_threads(1)
