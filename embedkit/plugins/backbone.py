"""The Backbone base class every encoder plugin subclasses: device, batching, autocast."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from embedkit.device import autocast_for, precision_name, resolve_device
from embedkit.errors import BackboneError
from embedkit.plugins.info import BackboneInfo
from embedkit.version import __version__

__all__ = ["Backbone"]


class Backbone:
    """An image encoder: PIL image -> tensor -> ``[B, D]`` float32 latents.

    Subclasses set ``self.model`` (an ``nn.Module``, moved to the device for you)
    and implement :attr:`info`, :meth:`preprocess` and :meth:`forward`. Backbones
    with a decoder also set ``can_decode = True`` and implement :meth:`forward_decode`.
    """

    can_decode: bool = False
    model: torch.nn.Module | None = None
    #: the fewest pixels per side :meth:`preprocess` needs (e.g. the resize before a
    #: centre crop); large JPEGs are then decoded at a reduced scale. None: full size.
    decode_size: int | None = None
    #: per-channel normalisation :meth:`finish_preprocess` applies to a uint8 input
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(self, device: str | torch.device | None = None, autocast: bool = True):
        self.device = resolve_device(device)
        self.autocast = autocast
        self._ready = False

    # -- to implement -------------------------------------------------------
    @property
    def info(self) -> BackboneInfo:
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> a ``[C, H, W]`` tensor: float and ready for :meth:`forward`,
        or ``uint8`` finished by :meth:`finish_preprocess` in the model's process."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """A preprocessed batch already on ``self.device`` -> ``[B, D]`` features."""
        raise NotImplementedError

    def forward_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents on ``self.device`` -> images ``[B, 3, H, W]`` in ``[0, 1]``."""
        raise BackboneError(f"backbone {self.info.name!r} has no decoder; use an ae:/vae: backbone")

    def identity_extra(self) -> dict[str, Any]:
        """What else pins this backbone's latent space (a library version, a pretrained
        tag); recorded in the dataset and compared on append. Optional."""
        return {}

    def finish_preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """A ``uint8`` batch from :meth:`preprocess`, already on the device -> the float
        input :meth:`forward` takes: ``/ 255``, then ``(x - input_mean) / input_std`` where
        declared. A backbone whose ``preprocess`` returns ``uint8`` (4x fewer bytes from
        the decode workers; the arithmetic then runs here, on the GPU when there is one)
        declares ``input_mean``/``input_std`` or overrides this."""
        out = batch.float().div_(255)
        if self.input_mean is not None:
            mean, std = self._mean_std(out.device)
            out = out.sub_(mean).div_(std)
        return out

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # made once per device: a tensor built from a list on a GPU waits for the GPU,
        # which would stall the queue of batches behind every forward pass
        key = (device, self.input_mean, self.input_std)
        cached = getattr(self, "_input_norm", None)
        if cached is None or cached[0] != key:
            mean = torch.tensor(self.input_mean, device=device).view(-1, 1, 1)
            std = torch.tensor(self.input_std, device=device).view(-1, 1, 1)
            cached = self._input_norm = (key, mean, std)
        return cached[1], cached[2]

    # -- provided -----------------------------------------------------------
    def weights_digest(self) -> str:
        """sha256 of the weights this backbone runs (every tensor of ``self.model``'s state
        dict, in key order); ``"none"`` without a model. Computed once."""
        if getattr(self, "_weights_digest", None) is None:
            self._weights_digest = _state_digest(self.model) if self.model is not None else "none"
        return self._weights_digest

    @property
    def precision(self) -> str:
        """The precision :meth:`forward` runs in here: ``fp32``, or ``bf16``/``fp16`` under
        CUDA autocast."""
        return precision_name(self.device, self.autocast)

    def identified_info(self, precision: str | None = None) -> BackboneInfo:
        """:attr:`info` with its identity: weights digest, precision (this device's, or the
        one given for where the model will run), embedkit version, plugin extras."""
        identity = {
            "weights": self.weights_digest(),
            "precision": precision or self.precision,
            "embedkit": __version__,
            **self.identity_extra(),
        }
        return dataclasses.replace(self.info, identity=identity)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    def to(self, device: str | torch.device) -> Backbone:
        """Move to another device."""
        self.device = resolve_device(device)
        self._ready = False
        return self

    def _prepare(self) -> None:
        if self._ready:
            return
        if self.model is not None:
            self.model.to(self.device).eval()
            if self.device.type == "cuda":
                self.model.to(memory_format=torch.channels_last)
        self._ready = True

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``[B, C, H, W]`` -> latents ``[B, D]`` (float32, on CPU)."""
        return self.encode_on_device(batch).cpu()

    def encode_on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`encode`, its latents left on ``self.device``: on CUDA the work is queued
        and not waited for, so an engine can queue the next batch before copying these.
        CUDA inputs go channels-last (a layout: the same math) under bf16/fp16 autocast."""
        self._prepare()
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        non_blocking = self.device.type == "cuda" and batch.is_pinned()
        batch = batch.to(self.device, non_blocking=non_blocking)
        if batch.dtype == torch.uint8:
            batch = self.finish_preprocess(batch)
        if self.device.type == "cuda" and batch.ndim == 4:  # images; other inputs as they are
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_for(self.device, self.autocast):
            out = self.forward(batch)
            return out.float().reshape(out.shape[0], -1)

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Convenience: PIL images -> latents ``[B, D]``."""
        from embedkit.images.decode import as_rgb  # what load_image does to a corpus file

        return self.encode(torch.stack([self.preprocess(as_rgb(im)) for im in images]))

    def decode(self, latents: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Latents ``[B, D]`` -> images ``[B, 3, H, W]`` in ``[0, 1]`` (float32, on CPU)."""
        if not self.can_decode:
            raise BackboneError(
                f"backbone {self.info.name!r} has no decoder; use an ae:/vae: backbone"
            )
        self._prepare()
        if torch.is_tensor(latents):
            z = latents.float()
        else:  # a copy: latents read from Parquet are read-only views
            z = torch.from_numpy(np.array(latents, dtype=np.float32))
        if z.ndim == 1:
            z = z.unsqueeze(0)
        if z.shape[1] != self.info.dim:
            raise BackboneError(
                f"latents have dim {z.shape[1]}, backbone {self.info.name!r} "
                f"decodes dim {self.info.dim}"
            )
        with torch.inference_mode(), autocast_for(self.device, self.autocast):
            images = self.forward_decode(z.to(self.device))
        return images.float().clamp(0, 1).cpu()

    def decode_images(self, latents: torch.Tensor | np.ndarray) -> list[Image.Image]:
        """Latents ``[B, D]`` -> PIL images."""
        arrays = (self.decode(latents).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        return [Image.fromarray(a) for a in arrays]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.name} dim={self.info.dim} device={self.device}>"


def _state_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()
