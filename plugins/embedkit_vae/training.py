"""Training loop: Adam, mixed precision on CUDA (bf16, or fp16 with a GradScaler), the
images kept on the host and copied per batch, a divergence check, per-epoch atomic
checkpoints, resume, early stopping on a held-out split, a reconstruction grid per epoch."""

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

from embedkit.device import autocast_dtype, resolve_device
from embedkit.errors import InputError
from embedkit.files import atomic_path
from embedkit.plugins.seeding import model_building
from embedkit_vae.checkpoint import load_train_state
from embedkit_vae.data import Source, batch_to_device, host_data, load_source, split_indices
from embedkit_vae.models import AutoEncoder, ModelConfig, kl_divergence
from embedkit_vae.run_state import clone_state, restore_run_state, save_run_state

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
    run = _start(config, options, Path(out_dir), dev, images, train_idx, val_idx, progress)
    state, best = _fresh_state(), clone_state(run.model.state_dict())
    if resume and (saved := load_train_state(run.run_dir)) is not None:
        state, best = restore_run_state(
            saved, run.run_dir, config, options, run.model, run.optimizer, run.scaler
        )
    resumed_from = state["epoch"]
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if state["stopped_early"]:
            break
        best = _epoch(run, state, best, epoch)
    return TrainResult(
        run_dir=run.run_dir,
        epoch=state["epoch"],
        best_epoch=state["best_epoch"],
        best_val_loss=state["best_val_loss"],
        stopped_early=state["stopped_early"],
        resumed_from=resumed_from,
        history=list(state["history"]),
    )


@dataclass
class _Run:
    """Everything an epoch needs: the model and its optimizer, the data, the options."""

    config: ModelConfig
    options: dict[str, Any]
    run_dir: Path
    device: torch.device
    model: AutoEncoder
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    data: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    progress: bool

    @property
    def grid_idx(self) -> torch.Tensor:
        return (self.val_idx if len(self.val_idx) else self.train_idx)[:GRID_IMAGES]


def _start(
    config: ModelConfig,
    options: dict[str, Any],
    run_dir: Path,
    dev: torch.device,
    images: torch.Tensor,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    progress: bool,
) -> _Run:
    """A freshly initialised model (seeded) and optimizer; the data stays on the host."""
    with model_building(seed=options["seed"]):  # seeded, the caller's RNG untouched
        model = AutoEncoder(config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=options["lr"])
    amp_dtype = autocast_dtype(dev)  # bf16, or fp16 where the GPU lacks bf16; None on CPU
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    data = host_data(images, dev)  # uint8, pinned on CUDA; batches are copied as they go
    return _Run(
        config,
        options,
        run_dir,
        dev,
        model,
        optimizer,
        scaler,
        amp_dtype,
        data,
        train_idx,
        val_idx,
        progress,
    )


def _fresh_state() -> dict[str, Any]:
    return {
        "epoch": 0,
        "best_epoch": 0,
        "best_val_loss": math.inf,
        "bad_epochs": 0,
        "stopped_early": False,
        "history": [],
    }


def _epoch(
    run: _Run, state: dict[str, Any], best: dict[str, torch.Tensor], epoch: int
) -> dict[str, torch.Tensor]:
    """Train and validate one epoch, update ``state``, checkpoint; returns the best weights."""
    opts, kind = run.options, run.config.kind
    started = time.perf_counter()
    order = torch.randperm(len(run.train_idx), generator=_generator(opts["seed"], epoch))
    bar = tqdm(
        run.train_idx[order].split(opts["batch_size"]),
        desc=f"{kind} epoch {epoch}/{opts['epochs']}",
        disable=not run.progress,
        leave=False,
        unit="batch",
    )
    rng = _generator(opts["seed"], epoch, run.device)
    train_rec, train_kl = _train_epoch(
        run.model, run.optimizer, run.scaler, run.data, bar, opts["beta"], rng, run.amp_dtype
    )
    if not math.isfinite(train_rec + train_kl):  # also under fp16: the scaler only skips
        # steps whose *gradients* overflow; a non-finite loss is the model diverging
        raise InputError(
            f"training diverged at epoch {epoch} (loss is not finite); lower lr "
            f"(--lr, now {opts['lr']}) and resume from the last checkpoint in {run.run_dir}"
        )
    val_rec, val_kl = _evaluate(
        run.model, run.data, run.val_idx, opts["batch_size"], run.device, run.amp_dtype
    )
    if not len(run.val_idx):
        val_rec, val_kl = train_rec, train_kl
    record = _record(run, epoch, (train_rec, train_kl), (val_rec, val_kl), started)
    state["history"].append(record)
    improved = record["val_loss"] < state["best_val_loss"]
    if improved:
        state.update(best_epoch=epoch, best_val_loss=record["val_loss"], bad_epochs=0)
        best = clone_state(run.model.state_dict())
    else:
        state["bad_epochs"] += 1
        patience = opts["patience"]
        state["stopped_early"] = bool(patience) and state["bad_epochs"] >= patience
    state["epoch"] = epoch
    grid = run.run_dir / "recon" / f"epoch_{epoch:03d}.png"
    _save_grid(run.model, run.data, run.grid_idx, run.device, grid)
    save_run_state(run.run_dir, run.config, opts, run.model, run.optimizer, run.scaler, state, best)
    if run.progress:
        _report(kind, epoch, opts["epochs"], record, improved)
    return best


def _record(
    run: _Run,
    epoch: int,
    train: tuple[float, float],
    val: tuple[float, float],
    started: float,
) -> dict[str, float]:
    """One epoch's line of the history: losses and per-pixel reconstruction errors."""
    pixels = 3 * run.config.image_size**2
    beta = run.options["beta"]
    return {
        "epoch": epoch,
        "train_loss": RECON_WEIGHT * train[0] + beta * train[1],
        "train_recon_mse": train[0] / pixels,
        "train_kl": train[1],
        "val_loss": RECON_WEIGHT * val[0] + beta * val[1],
        "val_recon_mse": val[0] / pixels,
        "val_kl": val[1],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _report(kind: str, epoch: int, epochs: int, record: dict[str, float], improved: bool) -> None:
    tqdm.write(
        f"{kind} epoch {epoch}/{epochs}: recon mse {record['train_recon_mse']:.5f} "
        f"kl {record['train_kl']:.2f} | val recon mse {record['val_recon_mse']:.5f} "
        f"kl {record['val_kl']:.2f}{' *' if improved else ''} ({record['seconds']:.1f}s)"
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
    """One pass over ``batches`` (index tensors into host ``data``): mean (SSE, KL) per
    image; stops early, returning non-finite means, once a loss is not finite."""
    model.train()
    device = next(model.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    for step, idx in enumerate(batches, start=1):
        x = batch_to_device(data, idx, device)
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
            if not bool(torch.isfinite(totals).all()):
                break  # diverged: the caller raises; no need to run out the epoch
    batches.close()
    return tuple((totals / max(count, 1)).tolist())


def _check_options(epochs: int, batch_size: int, lr: float, beta: float) -> None:
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be >= 1 (got {epochs}, {batch_size})")
    if lr <= 0 or beta < 0:
        raise InputError(f"lr must be > 0 and beta >= 0 (got lr={lr}, beta={beta})")


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
        x = batch_to_device(data, chunk, device)
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
    x = batch_to_device(data, idx, device)
    recon = model(x)[0].float().clamp(0, 1)
    rows = [t for i in range(0, len(x), 8) for t in (x[i : i + 8], recon[i : i + 8])]
    grid = make_grid(torch.cat(rows).cpu(), nrow=8, padding=1, pad_value=0.5)
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")
