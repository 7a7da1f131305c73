"""The ``embedkit`` command line: a thin layer over the Python API."""

from __future__ import annotations

import sys
import traceback

import click

from embedkit.errors import EmbedkitError
from embedkit.plugins import broken_plugins, call_hook

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="embedkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """embedkit: embed image collections, find neighbours, do latent arithmetic."""
    ctx.obj = {"debug": debug}


@cli.command()
def backbones() -> None:
    """List every backbone name or prefix and the plugin that provides it."""
    from embedkit.registry import list_backbones

    entries = list_backbones()
    width = max([len(e.name) for e in entries] + [8])
    plugin_width = max([len(e.plugin) for e in entries] + [6])
    click.echo(f"{'BACKBONE':<{width}}  {'PLUGIN':<{plugin_width}}  DESCRIPTION")
    for e in entries:
        click.echo(f"{e.name:<{width}}  {e.plugin:<{plugin_width}}  {e.description}")
    _warn_broken()


@cli.command()
def plugins() -> None:
    """List loaded plugins and any that failed."""
    from embedkit.plugins import plugin_names

    for name in plugin_names():
        click.echo(name)
    _warn_broken()


def _warn_broken() -> None:
    for name, error in broken_plugins().items():
        click.echo(f"warning: plugin {name!r} is broken: {error}", err=True)


@cli.command()
def demo() -> None:
    """Run the end-to-end demo on the built-in corpus."""
    click.echo("demo arrives with a later issue (issue 7); meanwhile try `embedkit backbones`")


_plugin_commands_added: list[bool] = []


def get_cli() -> click.Group:
    """The CLI group with plugin commands added (once)."""
    if not _plugin_commands_added:
        call_hook("register_commands", lambda plugin: {"cli": cli})
        _plugin_commands_added.append(True)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning embedkit errors into one-line messages."""
    get_cli()
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="embedkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EmbedkitError as exc:
        if "--debug" in args:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
