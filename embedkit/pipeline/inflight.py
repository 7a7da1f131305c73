"""Latents in flight: a batch's forward pass queued on its device and the copy of its
latents to the host queued behind it, waited for only when they are needed.

On CUDA the latents are copied with ``non_blocking=True`` into pinned host memory and a
CUDA event is recorded after the copy; :func:`run_lagged` waits for batch i's event only
once batch i+1's forward pass is queued, so the GPU never idles while a copy lands. On
CPU (and MPS) the latents are on the host when the forward pass returns: no pinning, no
event, the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from embedkit.plugins.backbone import Backbone

__all__ = ["Landing", "launch", "run_lagged"]

Job = TypeVar("Job")


class Landing(NamedTuple):
    """A batch's latents on their way to the host: the host tensor they land in and the
    CUDA event recorded after the copy (None where they are there already)."""

    host: torch.Tensor
    event: Any | None  # torch.cuda.Event

    def wait(self) -> np.ndarray:
        """The latents as numpy, once the copy has landed."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def launch(backbone: Backbone, pixels: torch.Tensor, normalize: bool) -> Landing:
    """Queue ``backbone``'s forward pass on ``pixels`` (L2-normalized on the device if
    asked) and the copy of its latents to the host; returns before either is done on CUDA."""
    with torch.inference_mode():
        out = backbone.encode_on_device(pixels)
        if normalize:
            out = torch.nn.functional.normalize(out, dim=1)
        if out.device.type != "cuda":
            return Landing(out.cpu(), None)
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        # blocking: the waiting thread sleeps instead of spinning on a core decoders need
        event = torch.cuda.Event(blocking=True)
        event.record(torch.cuda.current_stream(out.device))
    return Landing(host, event)


def run_lagged(
    jobs: Iterable[Job],
    start: Callable[[Job], Landing],
    finish: Callable[[Job, Landing | None, BaseException | None], None],
) -> None:
    """``start`` each job, then ``finish`` the one before it: a batch is waited for only
    once the next one is queued behind it. ``finish(job, landing, None)`` for a started
    job, ``finish(job, None, error)`` for one whose ``start`` raised (the job before it
    is finished first)."""
    held: tuple[Job, Landing] | None = None
    for job in jobs:
        try:
            landing = start(job)
        except Exception as exc:
            if held is not None:
                finish(*held, None)
                held = None
            finish(job, None, exc)
            continue
        if held is not None:
            finish(*held, None)
        held = (job, landing)
    if held is not None:
        finish(*held, None)
