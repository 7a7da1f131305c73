"""Training loop: Adam, mixed precision on CUDA, per-epoch atomic checkpoints, resume,
early stopping on a held-out split, and a reconstruction grid per epoch."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from embedkit.device import resolve_device
from embedkit.errors import EmbedkitError, InputError
from embedkit.files import atomic_path
from embedkit_vae.checkpoint import (
    STATE,
    load_train_state,
    save_model,
    save_train_state,
)
from embedkit_vae.data import Source, load_source, split_indices
from embedkit_vae.models import AutoEncoder, ModelConfig, kl_divergence

__all__ = ["TrainResult", "train"]

GRID_IMAGES = 16
# The reconstruction term is the Gaussian negative log-likelihood of the pixels with
# noise sigma = 0.1: sum of squared errors / (2 * sigma^2). With beta = 1 the loss is
# the usual VAE objective (negative ELBO, up to a constant).
RECON_SIGMA = 0.1
RECON_WEIGHT = 1 / (2 * RECON_SIGMA**2)


@dataclass
class TrainResult:
    """What a call to :func:`train` left in ``run_dir``."""

    run_dir: Path
    epoch: int  # last completed epoch
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from: int  # the epoch this call started after (0: a fresh run)
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    source: Source,
    out_dir: str | Path,
    kind: str = "vae",
    *,
    latent_dim: int = 32,
    image_size: int = 64,
    channels: Sequence[int] | None = None,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 2e-3,
    beta: float = 1.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    resume: bool = True,
    val_fraction: float = 0.1,
    patience: int | None = 5,
    progress: bool = True,
) -> TrainResult:
    """Train a convolutional autoencoder (``kind="ae"``) or VAE (``kind="vae"``).

    Args:
        source: a corpus folder with labels.parquet, a folder of images, or image paths.
        out_dir: the run folder; load the result with ``load_backbone(f"{kind}:{out_dir}")``.
        latent_dim, image_size, channels: the architecture (see :class:`ModelConfig`).
        epochs: total epochs; re-running with more continues a finished run.
        beta: weight of the KL term (VAE only): loss = recon + beta * KL, where recon
            is an image's summed squared error / (2 * 0.1^2); beta = 1 is the plain VAE.
        seed: fixes initialisation, the validation split, shuffling and VAE noise.
        resume: continue from ``out_dir``'s last checkpoint when it has one.
        val_fraction: share of images held out for validation and early stopping.
        patience: stop after this many epochs without a better validation loss
            (``None`` or 0: never); ``model.safetensors`` always holds the best epoch.
        progress: show a progress bar and one summary line per epoch.
    """
    config = ModelConfig(kind, image_size, latent_dim, tuple(channels or ()))
    _check_options(epochs, batch_size, lr, beta)
    run_dir = Path(out_dir)
    dev = resolve_device(device)
    images = load_source(source, config.image_size)
    train_idx, val_idx = split_indices(len(images), val_fraction, seed)
    options = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "beta": beta,
        "seed": seed,
        "val_fraction": val_fraction,
        "patience": patience or 0,
        "n_images": len(images),
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "source": str(source) if isinstance(source, str | Path) else f"<{len(images)} paths>",
    }
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = AutoEncoder(config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    amp_dtype = _amp_dtype(dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    state: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_val_loss": math.inf,
        "bad_epochs": 0,
        "stopped_early": False,
        "history": [],
    }
    best = _clone(model.state_dict())
    if resume and (saved := load_train_state(run_dir)) is not None:
        state, best = _restore(saved, run_dir, config, options, model, optimizer, scaler)
    resumed_from = state["epoch"]

    data = images.to(dev) if dev.type == "cuda" else images
    grid_idx = (val_idx if len(val_idx) else train_idx)[:GRID_IMAGES]
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if state["stopped_early"]:
            break
        started = time.perf_counter()
        order = torch.randperm(len(train_idx), generator=_generator(seed, epoch))
        bar = tqdm(
            train_idx[order].split(batch_size),
            desc=f"{kind} epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        train_rec, train_kl = _train_epoch(
            model, optimizer, scaler, data, bar, beta, _generator(seed, epoch, dev), amp_dtype
        )
        if not math.isfinite(train_rec + train_kl) and not scaler.is_enabled():
            raise InputError(
                f"training diverged at epoch {epoch} (loss is not finite); lower lr "
                f"(--lr, now {lr}) and resume from the last checkpoint in {run_dir}"
            )
        val_rec, val_kl = _evaluate(model, data, val_idx, batch_size, dev, amp_dtype)
        if not len(val_idx):
            val_rec, val_kl = train_rec, train_kl
        val_loss = RECON_WEIGHT * val_rec + beta * val_kl
        pixels = 3 * config.image_size**2
        record = {
            "epoch": epoch,
            "train_loss": RECON_WEIGHT * train_rec + beta * train_kl,
            "train_recon_mse": train_rec / pixels,
            "train_kl": train_kl,
            "val_loss": val_loss,
            "val_recon_mse": val_rec / pixels,
            "val_kl": val_kl,
            "seconds": round(time.perf_counter() - started, 3),
        }
        state["history"].append(record)
        improved = val_loss < state["best_val_loss"]
        if improved:
            state.update(best_epoch=epoch, best_val_loss=val_loss, bad_epochs=0)
            best = _clone(model.state_dict())
        else:
            state["bad_epochs"] += 1
            state["stopped_early"] = bool(patience) and state["bad_epochs"] >= patience
        state["epoch"] = epoch
        _save_grid(model, data, grid_idx, dev, run_dir / "recon" / f"epoch_{epoch:03d}.png")
        _checkpoint(run_dir, config, options, model, optimizer, scaler, state, best)
        if progress:
            tqdm.write(
                f"{kind} epoch {epoch}/{epochs}: recon mse {record['train_recon_mse']:.5f} "
                f"kl {train_kl:.2f} | val recon mse {record['val_recon_mse']:.5f} "
                f"kl {val_kl:.2f}{' *' if improved else ''} ({record['seconds']:.1f}s)"
            )
    return TrainResult(
        run_dir=run_dir,
        epoch=state["epoch"],
        best_epoch=state["best_epoch"],
        best_val_loss=state["best_val_loss"],
        stopped_early=state["stopped_early"],
        resumed_from=resumed_from,
        history=list(state["history"]),
    )


def _train_epoch(
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: torch.Tensor,
    batches: tqdm,
    beta: float,
    rng: torch.Generator,
    amp_dtype: torch.dtype | None,
) -> tuple[float, float]:
    """One pass over ``batches`` (index tensors into ``data``): mean (SSE, KL) per image."""
    model.train()
    device = next(model.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    for step, idx in enumerate(batches, start=1):
        x = data[idx.to(data.device)].to(device, non_blocking=True).float().div_(255)
        noise = None
        if model.variational:
            shape = (len(idx), model.config.latent_dim)
            noise = torch.randn(shape, generator=rng, device=device)
        with _autocast(device, amp_dtype):
            recon, mean, logvar = model(x, noise)
        rec, kl = _losses(recon, x, mean, logvar)
        loss = RECON_WEIGHT * rec + beta * kl
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals += torch.stack([rec.detach(), kl.detach()]).double() * len(idx)
        count += len(idx)
        if step % 10 == 0 or step == len(batches):  # .item() syncs a GPU: not every step
            batches.set_postfix(recon=f"{rec.item() / x[0].numel():.4f}", kl=f"{kl.item():.2f}")
    batches.close()
    return tuple((totals / max(count, 1)).tolist())


def _check_options(epochs: int, batch_size: int, lr: float, beta: float) -> None:
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be >= 1 (got {epochs}, {batch_size})")
    if lr <= 0 or beta < 0:
        raise InputError(f"lr must be > 0 and beta >= 0 (got lr={lr}, beta={beta})")


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a GradScaler); none off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _generator(seed: int, epoch: int, device: torch.device | None = None) -> torch.Generator:
    """A fresh generator per (seed, epoch): a resumed run draws what a straight run would."""
    gen = torch.Generator(device=device or "cpu")
    return gen.manual_seed((seed * 1_000_003 + epoch) % 2**63)


def _losses(
    recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image summed squared error and KL, averaged over the batch (in float32)."""
    rec = (recon.float() - x).pow(2).sum(dim=(1, 2, 3)).mean()
    kl = kl_divergence(mean.float(), None if logvar is None else logvar.float()).mean()
    return rec, kl


@torch.no_grad()
def _evaluate(
    model: AutoEncoder,
    data: torch.Tensor,
    idx: torch.Tensor,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> tuple[float, float]:
    """Mean summed-squared-error and KL over ``idx``, decoding the posterior mean."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    for chunk in idx.split(max(batch_size, 256)):
        x = data[chunk.to(data.device)].to(device).float().div_(255)
        with _autocast(device, amp_dtype):
            recon, mean, logvar = model(x)
        rec, kl = _losses(recon, x, mean, logvar)
        totals += torch.tensor([rec.item(), kl.item()], dtype=torch.float64) * len(chunk)
    return tuple((totals / max(len(idx), 1)).tolist())


@torch.no_grad()
def _save_grid(
    model: AutoEncoder, data: torch.Tensor, idx: torch.Tensor, device: torch.device, path: Path
) -> None:
    """Rows of 8 originals, each followed by a row of their reconstructions."""
    model.eval()
    x = data[idx.to(data.device)].to(device).float().div_(255)
    recon = model(x)[0].float().clamp(0, 1)
    rows = [t for i in range(0, len(x), 8) for t in (x[i : i + 8], recon[i : i + 8])]
    grid = make_grid(torch.cat(rows).cpu(), nrow=8, padding=1, pad_value=0.5)
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _checkpoint(
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
_RESUME_KEYS = ("seed", "val_fraction", "n_images", "batch_size")


def _restore(
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
    for key in _RESUME_KEYS:
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
