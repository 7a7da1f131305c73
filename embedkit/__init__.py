"""embedkit: turn image collections into latent vectors and work with them."""

from embedkit.backbone import Backbone, BackboneInfo
from embedkit.errors import BackboneError, BackboneNotFound, EmbedkitError, InputError, PluginError
from embedkit.hookspecs import hookimpl
from embedkit.plugins import broken_plugins
from embedkit.registry import list_backbones, load_backbone

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneInfo",
    "BackboneNotFound",
    "EmbedkitError",
    "InputError",
    "PluginError",
    "broken_plugins",
    "hookimpl",
    "list_backbones",
    "load_backbone",
]
