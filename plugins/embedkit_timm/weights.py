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


def load_weights(model: torch.nn.Module, path: str | Path, arch: str) -> str | None:
    """Load ``path`` into ``model``, explaining any mismatch in one line.

    Key names must match, or else every tensor must line up with the model's by
    order and shape (a checkpoint of the same architecture from another
    implementation): it is then loaded by position with timm's remap. Returns a
    one-line note when that happened, None when the names matched.
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    by_name = _mismatch(state, expected)
    if by_name is None:
        model.load_state_dict(state, strict=True)
        return None
    # safetensors stores keys sorted by name, so their order says nothing about the model's
    if Path(path).suffix == ".safetensors":
        by_order = "a .safetensors file keeps no key order; save a .pth to load by position"
    else:
        by_order = _positional_mismatch(state, expected)
    if by_order is None:
        from timm.models import remap_state_dict

        model.load_state_dict(remap_state_dict(state, model, allow_reshape=False), strict=True)
        return (
            f"weights file {Path(path).name}: its {len(state)} tensors have other names "
            f"than timm's {arch} but line up by order and shape; loaded by position"
        )
    raise BackboneError(
        f"weights file {path} does not fit architecture {arch!r}: {by_name}; "
        f"nor by position ({by_order}); use weights saved from that model"
    )


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """What differs between ``state`` and ``expected`` by key name, or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
    ):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
    return ", ".join(parts) or None


def _positional_mismatch(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> str | None:
    """Where the tensors of ``state`` stop lining up with ``expected`` in order, or None."""
    if len(state) != len(expected):
        return f"{len(state)} tensors for the model's {len(expected)}"
    pairs = zip(expected.items(), state.items(), strict=True)
    for i, ((want_key, want), (got_key, got)) in enumerate(pairs):
        if want.shape != got.shape:
            return (
                f"tensor {i} is {got_key} {tuple(got.shape)} where {want_key} "
                f"{tuple(want.shape)} is expected"
            )
    return None
