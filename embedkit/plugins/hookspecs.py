"""The plugin contract: the hooks an embedkit plugin may implement.

A plugin is a module (or package) exposed through the ``embedkit`` entry-point
group whose functions are decorated with :data:`hookimpl`.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("embedkit")
hookimpl = HookimplMarker("embedkit")


@hookspec
def register_backbones(register):
    """Register backbones: ``register(name, factory, description="", suggest=None,
    options=None)``.

    A name ending in ``/`` or ``:`` is a prefix (``"timm/"``); its factory is
    called as ``factory(rest_of_name, **options)``. Any other name is exact and
    its factory is called as ``factory(**options)``. ``options`` names the options
    the backbone takes (default: the factory's named parameters): only those are
    accepted from a shared dataset's metadata.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``embedkit`` click group."""
