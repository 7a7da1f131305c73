"""Choosing the torch devices (one, or several for model replicas) and the autocast and
cuDNN settings that go with them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch

from embedkit.errors import BackboneError

__all__ = [
    "autocast_dtype",
    "autocast_for",
    "cudnn_autotune",
    "names_several",
    "precision_name",
    "resolve_device",
    "resolve_devices",
]


def names_several(spec: object) -> bool:
    """Whether a device spec names a list of devices (``cuda:0,1``, ``cpu,cpu``, ``all``)."""
    return isinstance(spec, str) and ("," in spec or spec.strip() == "all")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Pick a device: the one asked for, else ``$EMBEDKIT_DEVICE`` (the first of a list),
    else cuda > mps > cpu."""
    requested = device if device is not None else os.environ.get("EMBEDKIT_DEVICE") or None
    if names_several(requested):
        if device is None:  # one backbone, while the environment names a run's devices
            return resolve_devices(requested)[0]
        raise BackboneError(
            f"device {requested!r} names several devices; a backbone runs on one, e.g. cuda:0 "
            "(embed spreads a run over several)"
        )
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
    if chosen.type == "cuda" and (chosen.index or 0) >= (count := torch.cuda.device_count()):
        raise BackboneError(f"device {requested!r} asked for but {count} CUDA devices are visible")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise BackboneError(f"device {requested!r} asked for but MPS is not available; use cpu")
    return chosen


def resolve_devices(spec: str | torch.device | None = None) -> list[torch.device]:
    """The devices of a run's model replicas: ``cuda:0,cuda:1`` or ``cuda:0,1`` (a bare
    index takes the kind before it), ``all`` (every visible CUDA device), ``cpu,cpu`` (two
    CPU replicas: for tests); one device otherwise, as :func:`resolve_device` picks it."""
    requested = spec if spec is not None else os.environ.get("EMBEDKIT_DEVICE") or None
    if not isinstance(requested, str) or not names_several(requested):
        return [resolve_device(requested)]
    if requested.strip() == "all":
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise BackboneError("device 'all' asked for but CUDA is not available; use cpu")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    devices: list[torch.device] = []
    kind = "cuda"
    for item in (part.strip() for part in requested.split(",")):
        device = resolve_device(f"{kind}:{item}" if item.isdigit() else item)
        kind = device.type
        devices.append(device)
    return devices


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The dtype autocast runs in on ``device``: bf16 (fp16 where that GPU lacks bf16) on
    CUDA; None elsewhere, where fp32 is faster or safer."""
    if not enabled or device.type != "cuda":
        return None
    with torch.cuda.device(device):  # asks this GPU, not the current one
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


@contextlib.contextmanager
def cudnn_autotune(devices: Iterable[torch.device]) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` on while a run on CUDA lasts (its batches all
    have one shape: cuDNN times its algorithms once per shape and keeps the fastest),
    restored after; a no-op without a CUDA device."""
    if not any(device.type == "cuda" for device in devices):
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
