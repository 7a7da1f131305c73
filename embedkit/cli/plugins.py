"""``embedkit backbones`` and ``embedkit plugins``: what is installed, and what is broken."""

from __future__ import annotations

import click


@click.command()
def backbones() -> None:
    """List every backbone name or prefix and the plugin that provides it."""
    from embedkit.plugins.registry import list_backbones

    entries = list_backbones()
    width = max([len(e.name) for e in entries] + [8])
    plugin_width = max([len(e.plugin) for e in entries] + [6])
    click.echo(f"{'BACKBONE':<{width}}  {'PLUGIN':<{plugin_width}}  DESCRIPTION")
    for e in entries:
        click.echo(f"{e.name:<{width}}  {e.plugin:<{plugin_width}}  {e.description}")
    _warn_broken()


@click.command()
def plugins() -> None:
    """List loaded plugins and any that failed."""
    from embedkit.plugins.manager import plugin_names

    for name in plugin_names():
        click.echo(name)
    _warn_broken()


def _warn_broken() -> None:
    from embedkit.plugins.registry import broken_plugins

    for name, error in broken_plugins().items():
        click.echo(f"warning: plugin {name!r} is broken: {error}", err=True)
