"""embedkit plugin: convolutional autoencoders and VAEs trained by embedkit (``ae:``/``vae:``).

Train with :func:`train` (or ``embedkit train vae SOURCE -o RUN``), then load the
run as a backbone: ``embedkit.load_backbone("vae:RUN")`` encodes and decodes.
"""

from __future__ import annotations

from embedkit.hookspecs import hookimpl
from embedkit_vae.backbone import AutoencoderBackbone, load_ae, load_vae
from embedkit_vae.models import AutoEncoder, ModelConfig
from embedkit_vae.training import TrainResult, train

__all__ = ["AutoEncoder", "AutoencoderBackbone", "ModelConfig", "TrainResult", "train"]


@hookimpl
def register_backbones(register):
    register(
        "vae:",
        load_vae,
        description="a VAE trained with `embedkit train vae`, e.g. vae:runs/shapes (decodes)",
    )
    register(
        "ae:",
        load_ae,
        description="an autoencoder trained with `embedkit train ae`, e.g. ae:runs/ae (decodes)",
    )


@hookimpl
def register_commands(cli):
    from embedkit_vae.commands import add_commands

    add_commands(cli)
