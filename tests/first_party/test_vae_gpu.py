"""VAE training on a GPU: the images stay on the host (uint8, pinned on CUDA) and move one
batch at a time; mixed precision (bf16, fp16 with a GradScaler) keeps the divergence check.
The logic is tested on CPU; the ``gpu`` tests run a short real training on CUDA."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from embedkit_vae import train
from embedkit_vae import training as train_module
from embedkit_vae.checkpoint import STATE, load_train_state
from embedkit_vae.data import batch_to_device, host_data
from sample_images import TINY_VAE

import embedkit
from embedkit.errors import InputError

TINY = TINY_VAE


@pytest.fixture
def moves(monkeypatch) -> list[dict]:
    """Every call of the training loop's host -> device batch copy."""
    calls: list[dict] = []

    def spy(data: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        out = batch_to_device(data, idx, device)
        calls.append({"data": data, "rows": len(idx), "out": out, "device": device})
        return out

    monkeypatch.setattr(train_module, "batch_to_device", spy)
    return calls


def test_data_stays_on_host_and_moves_per_batch(tiny_corpus, tmp_path, moves):
    train(tiny_corpus, tmp_path / "run", "vae", epochs=1, device="cpu", **TINY)
    # 3 training batches (16 + 16 + 11), the validation chunk, the reconstruction grid
    assert [c["rows"] for c in moves] == [16, 16, 11, 5, 5]
    data = moves[0]["data"]
    assert all(c["data"] is data for c in moves)  # one host tensor, never re-copied
    assert data.device.type == "cpu" and data.dtype == torch.uint8 and len(data) == 48
    assert all(c["out"].dtype == torch.float32 for c in moves)
    assert all(c["out"].shape == (c["rows"], 3, 32, 32) for c in moves)


def test_batch_to_device_copies_uint8_non_blocking(monkeypatch):
    data = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    idx = torch.tensor([7, 2, 5])
    copies = []
    real_to = torch.Tensor.to

    def spy_to(self, *args, **kwargs):
        copies.append((self.dtype, tuple(self.shape), kwargs.get("non_blocking")))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    out = batch_to_device(data, idx, torch.device("cpu"))
    moved = [c for c in copies if c[0] == torch.uint8]
    assert moved == [(torch.uint8, (3, 3, 4, 4), True)]  # the rows alone, as uint8
    assert torch.equal(out, data[idx].float() / 255)


def test_pinned_data_is_gathered_into_pinned_rows(monkeypatch):
    data = torch.randint(0, 256, (10, 3, 2, 2), dtype=torch.uint8)
    asked = []
    real_empty = torch.empty

    def fake_empty(*args, pin_memory=False, **kwargs):
        asked.append(pin_memory)  # no CUDA here to pin with: record the request
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    monkeypatch.setattr(torch, "empty", fake_empty)
    out = batch_to_device(data, torch.tensor([9, 0]), torch.device("cpu"))
    assert asked == [True]
    assert torch.equal(out, data[[9, 0]].float() / 255)


def test_host_data_pins_for_cuda_only(monkeypatch):
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    pinned = images.clone()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned)
    assert host_data(images, torch.device("cpu")) is images
    assert host_data(images, torch.device("cuda")) is pinned

    def refuse(self):
        raise RuntimeError("cannot lock memory")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    assert host_data(images, torch.device("cuda")) is images  # pageable copies still work


@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_non_finite_loss_stops_training(tiny_corpus, tmp_path, monkeypatch, fp16_scaler):
    if fp16_scaler:  # as on a GPU without bf16: a GradScaler, which used to turn the check off
        monkeypatch.setattr(train_module, "autocast_dtype", lambda device: torch.float16)
        monkeypatch.setattr(train_module, "_autocast", lambda *a: contextlib.nullcontext())
    real_losses, steps = train_module._losses, []

    def diverging(*args):
        rec, kl = real_losses(*args)
        steps.append(1)
        return (rec * math.nan, kl) if len(steps) >= 2 else (rec, kl)

    monkeypatch.setattr(train_module, "_losses", diverging)
    run = tmp_path / "run"
    with pytest.raises(InputError, match="diverged at epoch 1") as excinfo:
        train(tiny_corpus, run, "ae", epochs=3, **{**TINY, "batch_size": 4})
    message = str(excinfo.value)
    assert "\n" not in message and "--lr" in message and str(run) in message
    assert len(steps) == 10  # stopped at the first check, not after all 11 batches
    assert not (run / STATE).exists()  # nothing diverged was saved


# -- on a real GPU ----------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_training_keeps_pinned_uint8_data_on_the_host(tiny_corpus, tmp_path, moves):
    run = tmp_path / "cuda"
    result = train(tiny_corpus, run, "vae", epochs=2, device="cuda", **TINY)
    data = moves[0]["data"]
    assert data.device.type == "cpu" and data.dtype == torch.uint8 and data.is_pinned()
    assert all(c["data"] is data and c["out"].is_cuda for c in moves)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    backbone = embedkit.load_backbone(f"vae:{run}", device="cpu")
    assert backbone.decode(torch.zeros(2, 4)).shape == (2, 3, 32, 32)
    resumed = train(tiny_corpus, run, "vae", epochs=3, device="cuda", **TINY)
    assert resumed.resumed_from == 2 and resumed.epoch == 3


@pytest.mark.gpu
def test_cuda_fp16_with_grad_scaler(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "autocast_dtype", lambda device: torch.float16)
    run = tmp_path / "fp16"
    result = train(tiny_corpus, run, "vae", epochs=2, device="cuda", **TINY)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    _, meta = load_train_state(run)
    assert meta["scaler"]["scale"] > 0  # the GradScaler ran and was saved for resume
    resumed = train(tiny_corpus, run, "vae", epochs=3, device="cuda", **TINY)
    assert resumed.resumed_from == 2 and math.isfinite(resumed.best_val_loss)


@pytest.mark.gpu
def test_cuda_non_finite_loss_stops_training(tiny_corpus, tmp_path, monkeypatch):
    real_losses = train_module._losses
    monkeypatch.setattr(
        train_module, "_losses", lambda *a: tuple(t * math.inf for t in real_losses(*a))
    )
    with pytest.raises(InputError, match="diverged at epoch 1") as excinfo:
        train(tiny_corpus, tmp_path / "run", "vae", epochs=2, device="cuda", **TINY)
    assert "\n" not in str(excinfo.value)
