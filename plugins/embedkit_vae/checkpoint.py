"""A training run folder on disk: weights, config and resumable state, all pickle-free.

``RUN/model.safetensors``        best weights so far (what ``vae:RUN`` loads)
``RUN/config.json``              model config, training options, per-epoch history
``RUN/train_state.safetensors``  last and best weights + Adam state; the loop state
                                 (epoch, best loss, patience, ...) as JSON metadata
``RUN/recon/epoch_NNN.png``      validation images (odd rows) over reconstructions

Every file is written to a temporary name and moved into place, so a run killed
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from embedkit.errors import BackboneError, InputError, first_line
from embedkit.files import atomic_path
from embedkit.plugins.seeding import model_building
from embedkit_vae.models import AutoEncoder, ModelConfig

__all__ = [
    "CONFIG",
    "FORMAT",
    "STATE",
    "WEIGHTS",
    "check_weights",
    "load_model",
    "load_train_state",
    "read_config",
    "save_model",
    "save_train_state",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.safetensors"
FORMAT = "embedkit-autoencoder"
VERSION = 1
_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_model(run_dir: Path, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write the weights a backbone loads, then the config.json describing them."""
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_file(_cpu(weights), str(tmp), metadata={"format": FORMAT})
    with atomic_path(run_dir / CONFIG) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **config}, indent=2))


def save_train_state(
    run_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    """Write resumable state: ``tensors`` plus ``state`` (JSON) as safetensors metadata."""
    with atomic_path(run_dir / STATE) as tmp:
        save_file(_cpu(tensors), str(tmp), metadata={"format": FORMAT, "state": json.dumps(state)})


def load_train_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The saved ``(tensors, state)`` of a run, or ``None`` when it has none yet."""
    path = run_dir / STATE
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = json.loads((f.metadata() or {})["state"])
    except (*_READ_ERRORS, KeyError) as exc:
        raise InputError(
            f"training state {path} is unreadable ({first_line(exc, 160)}); delete {path.parent} "
            "or train with resume=False (--no-resume) to start over"
        ) from exc
    return tensors, state


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Read and check a run's config.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BackboneError(
            f"checkpoint folder {run_dir} does not exist; train one with "
            f"`embedkit train vae SOURCE -o {run_dir}`"
        )
    path = run_dir / CONFIG
    if not path.is_file():
        raise BackboneError(
            f"{run_dir} has no {CONFIG}; point at a folder made by `embedkit train vae|ae`"
        )
    try:
        config = json.loads(path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format is {config.get('format')!r}, not {FORMAT!r}")
        ModelConfig.from_dict(config["model"])
    except (ValueError, KeyError, TypeError, AttributeError, BackboneError) as exc:
        raise BackboneError(
            f"{path} is corrupt or not from `embedkit train` ({first_line(exc, 160)}); "
            f"retrain into {run_dir}"
        ) from exc
    return config


def load_model(run_dir: str | Path) -> tuple[AutoEncoder, dict[str, Any]]:
    """Rebuild the network of a run folder on CPU with its best weights, in eval mode."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model_config = ModelConfig.from_dict(config["model"])
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise BackboneError(f"{run_dir} has no {WEIGHTS}; finish (or resume) its training run")
    try:
        weights = load_file(str(path), device="cpu")
    except _READ_ERRORS as exc:
        raise BackboneError(
            f"weights file {path} is corrupt ({first_line(exc, 160)}); retrain or restore it"
        ) from exc
    with model_building():  # its random init must not interleave with a seeded build
        model = AutoEncoder(model_config)
    check_weights(model, weights, path, model_config)
    model.load_state_dict(weights, strict=True)
    return model.eval(), config


def check_weights(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path, config: ModelConfig
) -> None:
    """Raise a one-line :class:`BackboneError` unless ``weights`` fit ``model`` exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return
    if wrong:
        key = wrong[0]
        detail = f"{key} has shape {list(weights[key].shape)}, expected {list(expected[key].shape)}"
    else:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
    raise BackboneError(
        f"weights file {path} does not match its {CONFIG} ({config.kind}, "
        f"{config.image_size}px, latent_dim={config.latent_dim}): {detail}; "
        "restore the matching config.json or retrain"
    )
