"""Loading a local weights file into a model, safely (no arbitrary pickle execution)."""

from __future__ import annotations

from pathlib import Path

import torch

from embedkit.errors import BackboneError, first_line

WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model_state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) state dict from disk."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(
            f"weights file {path} does not exist; pass an existing .safetensors or .pth file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    # unreadable files fail in many ways: UnpicklingError, SafetensorError, RuntimeError,
    # EOFError, even IndexError from torch's weights-only unpickler on garbage bytes
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise BackboneError(
                f"weights file {path} contains pickled Python objects, refused for safety; "
                "save a plain state dict (model.state_dict()) or use safetensors"
            ) from exc
        raise BackboneError(
            f"weights file {path} is corrupt or not a weights file ({first_line(exc, 160)}); "
            "expected a safetensors file or a torch state dict"
        ) from exc
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BackboneError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: torch.nn.Module, path: str | Path, arch: str) -> None:
    """Load ``path`` into ``model`` strictly, explaining any mismatch in one line."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong_shape),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise BackboneError(
            f"weights file {path} does not fit architecture {arch!r}: "
            f"{', '.join(parts)}; use weights saved from that model"
        )
    model.load_state_dict(state, strict=True)
