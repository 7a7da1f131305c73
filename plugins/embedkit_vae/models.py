"""Convolutional autoencoder and VAE: stride-2 conv encoder, transposed-conv decoder."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from embedkit.errors import BackboneError

__all__ = [
    "KINDS",
    "SIZES",
    "AutoEncoder",
    "ModelConfig",
    "build_model",
    "default_channels",
    "kl_divergence",
]

KINDS = ("ae", "vae")
SIZES = (32, 64, 128)
BOTTOM = 4  # spatial side of the last feature map


def default_channels(image_size: int) -> tuple[int, ...]:
    """One width per stride-2 stage, doubling from 32 up to 256 (64px: 32-64-128-256)."""
    stages = int(math.log2(image_size // BOTTOM))
    return tuple(min(32 * 2**i, 256) for i in range(stages))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored in a run's config.json)."""

    kind: str = "vae"
    image_size: int = 64
    latent_dim: int = 32
    channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BackboneError(f"model kind {self.kind!r} is unknown; use one of {KINDS}")
        if self.image_size not in SIZES:
            raise BackboneError(f"image_size {self.image_size} is unsupported; use one of {SIZES}")
        if self.latent_dim < 1:
            raise BackboneError(f"latent_dim must be >= 1 (got {self.latent_dim})")
        channels = tuple(int(c) for c in self.channels) or default_channels(self.image_size)
        stages = len(default_channels(self.image_size))
        if len(channels) != stages or min(channels) < 1:
            raise BackboneError(
                f"channels {list(channels)} must list {stages} positive widths for "
                f"{self.image_size}px images (one per stride-2 stage), e.g. "
                f"{','.join(map(str, default_channels(self.image_size)))}"
            )
        object.__setattr__(self, "channels", channels)

    def describe(self) -> str:
        """One line, e.g. ``vae 64px latent_dim=32 channels=32,64,128,256``."""
        channels = ",".join(map(str, self.channels))
        return f"{self.kind} {self.image_size}px latent_dim={self.latent_dim} channels={channels}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            kind=str(data["kind"]),
            image_size=int(data["image_size"]),
            latent_dim=int(data["latent_dim"]),
            channels=tuple(data.get("channels") or ()),
        )


class AutoEncoder(nn.Module):
    """A plain (``kind="ae"``) or variational (``kind="vae"``) convolutional autoencoder.

    Images are ``[B, 3, S, S]`` in ``[0, 1]``; the decoder ends in a sigmoid.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        widths = (3, *config.channels)
        encoder: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        flat = widths[-1] * BOTTOM * BOTTOM
        heads = 2 if self.variational else 1
        self.to_latent = nn.Linear(flat, heads * config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        decoder: list[nn.Module] = [
            nn.LeakyReLU(0.2),
            nn.Unflatten(1, (widths[-1], BOTTOM, BOTTOM)),
        ]
        for c_in, c_out in itertools.pairwise(widths[::-1]):
            decoder += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        decoder[-1] = nn.Sigmoid()
        self.decoder = nn.Sequential(*decoder)

    @property
    def variational(self) -> bool:
        return self.config.kind == "vae"

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images -> ``(mean, logvar)`` for a VAE, ``(code, None)`` for an AE."""
        out = self.to_latent(self.encoder(images))
        if not self.variational:
            return out, None
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, D]`` -> images ``[B, 3, S, S]`` in ``[0, 1]``."""
        return self.decoder(self.from_latent(latents))

    def forward(
        self, images: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Reconstruct: returns ``(reconstruction, mean, logvar)``.

        A VAE decodes ``mean + exp(logvar / 2) * noise`` (the reparameterization
        trick) when ``noise`` is given, else the mean itself.
        """
        mean, logvar = self.encode(images)
        z = mean
        if self.variational and noise is not None and logvar is not None:
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode(z), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor | None) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image, summed over latent dims: ``[B]``."""
    if logvar is None:
        return torch.zeros(mean.shape[0], device=mean.device)
    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=1)


def build_model(
    kind: str, image_size: int, latent_dim: int, channels: Sequence[int] | None = None
) -> AutoEncoder:
    """Convenience: an untrained :class:`AutoEncoder` from plain arguments."""
    config = ModelConfig(kind, image_size, latent_dim, tuple(channels or ()))
    return AutoEncoder(config)
