"""Plugins: the hook contract, the plugin manager, the backbone registry and base class.

``hookspecs`` is the contract, ``manager`` finds plugins through entry points,
``registry`` resolves backbone names, ``backbone``/``info`` are what a plugin subclasses
and describes its latents with.
"""

from embedkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "hookspecs": ["hookimpl", "hookspec"],
        "manager": ["call_hook", "get_plugin_manager", "plugin_names", "reset_plugins"],
        "registry": ["BackboneEntry", "broken_plugins", "list_backbones", "load_backbone"],
        "seeding": ["model_building"],
        "info": ["BackboneInfo"],
        "backbone": ["Backbone"],
    },
)
