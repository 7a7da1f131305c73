"""embedkit: turn image collections into latent vectors and work with them."""

from embedkit.backbone import Backbone, BackboneInfo
from embedkit.embed import EmbedResult, embed
from embedkit.errors import BackboneError, BackboneNotFound, EmbedkitError, InputError, PluginError
from embedkit.hookspecs import hookimpl
from embedkit.plugins import broken_plugins
from embedkit.registry import list_backbones, load_backbone
from embedkit.sources import load_image, read_source
from embedkit.store import LatentDataset, open_latents
from embedkit.writer import LatentWriter, write_latents

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneInfo",
    "BackboneNotFound",
    "EmbedResult",
    "EmbedkitError",
    "InputError",
    "LatentDataset",
    "LatentWriter",
    "PluginError",
    "broken_plugins",
    "embed",
    "hookimpl",
    "list_backbones",
    "load_backbone",
    "load_image",
    "open_latents",
    "read_source",
    "write_latents",
]
