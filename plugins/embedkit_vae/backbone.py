"""A trained run folder as an embedkit backbone: ``ae:RUN`` and ``vae:RUN``."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from embedkit.errors import BackboneError
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.info import BackboneInfo
from embedkit_vae.checkpoint import load_model
from embedkit_vae.data import to_tensor

__all__ = ["AutoencoderBackbone", "load_ae", "load_vae"]


class AutoencoderBackbone(Backbone):
    """Encode with a trained autoencoder (the VAE's posterior mean) and decode latents.

    Args:
        checkpoint_dir: a run folder written by ``embedkit train ae|vae``.
        kind: ``"ae"`` or ``"vae"``; must match the run (``None`` accepts either).
        device: ``cpu``, ``cuda``, ``mps``; default picks the best available.
    """

    can_decode = True

    def __init__(
        self,
        checkpoint_dir: str | Path,
        kind: str | None = None,
        device: str | torch.device | None = None,
        autocast: bool = True,
    ):
        super().__init__(device=device, autocast=autocast)
        self.model, self.run_config = load_model(Path(checkpoint_dir).expanduser())
        self.run_dir = Path(checkpoint_dir).expanduser().resolve()
        self.config = self.model.config
        if kind is not None and kind != self.config.kind:
            raise BackboneError(
                f"{checkpoint_dir} was trained with `embedkit train {self.config.kind}`; "
                f"load it as {self.config.kind}:{checkpoint_dir}"
            )
        self.decode_size = self.config.image_size
        self._info = BackboneInfo(
            name=f"{self.config.kind}:{self.run_dir}",
            dim=self.config.latent_dim,
            config={},
        )

    @property
    def info(self) -> BackboneInfo:
        return self._info

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> ``[3, S, S]`` in ``[0, 1]`` at the model's image size."""
        return to_tensor(image, self.config.image_size)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mean, _ = self.model.encode(batch)
        return mean

    def forward_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents)


def load_vae(checkpoint_dir: str, **options) -> AutoencoderBackbone:
    """Factory for the ``vae:`` prefix."""
    return AutoencoderBackbone(checkpoint_dir, kind="vae", **options)


def load_ae(checkpoint_dir: str, **options) -> AutoencoderBackbone:
    """Factory for the ``ae:`` prefix."""
    return AutoencoderBackbone(checkpoint_dir, kind="ae", **options)
