"""Choosing the torch device and the autocast settings that go with it."""

from __future__ import annotations

import contextlib
import os

import torch

from embedkit.errors import BackboneError

__all__ = ["autocast_dtype", "autocast_for", "precision_name", "resolve_device"]


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


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The dtype autocast runs in on ``device``: bf16 (fp16 where the GPU lacks bf16) on
    CUDA; None elsewhere, where fp32 is faster or safer."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(device: torch.device, enabled: bool = True) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: the precision a forward pass runs in."""
    dtype = autocast_dtype(device, enabled)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA; a no-op elsewhere."""
    dtype = autocast_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
