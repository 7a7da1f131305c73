"""Choosing the torch device and the autocast settings that go with it."""

from __future__ import annotations

import contextlib
import os

import torch

from embedkit.errors import BackboneError

__all__ = ["autocast_for", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Pick a device: the one asked for, else ``$EMBEDKIT_DEVICE``, else cuda > mps > cpu."""
    requested = device if device is not None else os.environ.get("EMBEDKIT_DEVICE") or None
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise BackboneError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or mps") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device {requested!r} asked for but CUDA is not available; use cpu")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise BackboneError(f"device {requested!r} asked for but MPS is not available; use cpu")
    return chosen


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA; a no-op elsewhere, where fp32 is faster or safer."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
