"""embedkit plugin: convolutional autoencoders and VAEs trained by embedkit (``ae:``/``vae:``).

Train with :func:`train` (or ``embedkit train vae SOURCE -o RUN``), then load the
run as a backbone: ``embedkit.load_backbone("vae:RUN")`` encodes and decodes.
Imported whenever embedkit loads its plugins, so torch is imported only on use.
"""

from __future__ import annotations

from embedkit.lazy import attach
from embedkit.plugins.hookspecs import hookimpl

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "backbone": ["AutoencoderBackbone", "load_ae", "load_vae"],
        "models": ["AutoEncoder", "ModelConfig"],
        "training": ["TrainResult", "train"],
    },
)


def _load_vae(checkpoint_dir: str, **options):
    from embedkit_vae.backbone import load_vae

    return load_vae(checkpoint_dir, **options)


def _load_ae(checkpoint_dir: str, **options):
    from embedkit_vae.backbone import load_ae

    return load_ae(checkpoint_dir, **options)


@hookimpl
def register_backbones(register):
    register(
        "vae:",
        _load_vae,
        description="a VAE trained with `embedkit train vae`, e.g. vae:runs/shapes (decodes)",
        options=(),
    )
    register(
        "ae:",
        _load_ae,
        description="an autoencoder trained with `embedkit train ae`, e.g. ae:runs/ae (decodes)",
        options=(),
    )


@hookimpl
def register_commands(cli):
    from embedkit_vae.commands import add_commands

    add_commands(cli)
