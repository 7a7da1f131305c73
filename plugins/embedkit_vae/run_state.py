"""A training run's resumable state: last and best weights, Adam and GradScaler state and
the loop counters, saved after every epoch and checked against the options on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from embedkit.errors import EmbedkitError, InputError
from embedkit_vae.checkpoint import STATE, save_model, save_train_state
from embedkit_vae.models import AutoEncoder, ModelConfig

__all__ = ["RESUME_KEYS", "clone_state", "restore_run_state", "save_run_state"]


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy of a state dict (the best weights are kept aside while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def save_run_state(
    run_dir: Path,
    config: ModelConfig,
    options: dict[str, Any],
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: dict[str, Any],
    best: dict[str, torch.Tensor],
) -> None:
    """Save resumable state first, then the best weights and config a backbone reads."""
    tensors = {f"last.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best.items()}
    optim = optimizer.state_dict()
    for index, slots in optim["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    meta = {
        "model": config.to_dict(),
        "training": options,
        "loop": state,
        "param_groups": optim["param_groups"],
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
    }
    save_train_state(run_dir, tensors, meta)
    summary = {k: state[k] for k in ("epoch", "best_epoch", "best_val_loss", "stopped_early")}
    save_model(
        run_dir,
        best,
        {"model": config.to_dict(), "training": options, **summary, "history": state["history"]},
    )


# Changing any of these would make the saved run a different experiment.
RESUME_KEYS = ("seed", "val_fraction", "n_images", "batch_size")


def restore_run_state(
    saved: tuple[dict[str, torch.Tensor], dict[str, Any]],
    run_dir: Path,
    config: ModelConfig,
    options: dict[str, Any],
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load a saved run's weights, Adam and loop state; refuse an incompatible run."""
    tensors, meta = saved
    hint = "pass the same options, another output folder, or resume=False (--no-resume)"
    try:
        saved_config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError, EmbedkitError):
        raise InputError(f"{run_dir / STATE} has no valid model config; {hint}") from None
    if saved_config != config:
        raise InputError(
            f"{run_dir} holds model {saved_config.describe()}, not {config.describe()} "
            f"as asked; {hint}"
        )
    for key in RESUME_KEYS:
        if meta["training"].get(key) != options[key]:
            raise InputError(
                f"{run_dir} was trained with {key}={meta['training'].get(key)!r}, "
                f"not {options[key]!r}; {hint}"
            )
    try:
        best = _load_state(tensors, meta, options["lr"], model, optimizer, scaler)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{run_dir / STATE} does not fit this run ({type(exc).__name__}); {hint}"
        ) from None
    loop = meta["loop"]
    loop["best_val_loss"] = float(loop["best_val_loss"])
    return loop, best


def _load_state(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    lr: float,
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> dict[str, torch.Tensor]:
    """Put saved last weights, Adam state and scaler state in place; return the best weights."""
    model.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("last.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    if best.keys() != model.state_dict().keys():
        raise KeyError("best weights")
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        group["lr"] = lr  # a resumed run may change the learning rate
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    if scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return best
