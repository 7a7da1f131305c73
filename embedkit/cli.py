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
@click.argument("source")
@click.option("--backbone", "-b", required=True, help="Backbone name, e.g. timm/resnet18.")
@click.option("--out", "-o", "out_dir", required=True, help="Latent dataset folder to write.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", "num_workers", type=int, default=None, help="Decode worker processes.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available).")
@click.option("--normalize", is_flag=True, help="Store L2-normalized vectors.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32")
@click.option("--path-column", default="path", show_default=True, help="Table column of paths.")
@click.option("--id-column", default=None, help="Table column of ids (default: id, else path).")
@click.option("--retry-errors", is_flag=True, help="Retry inputs that failed in earlier runs.")
@click.option("--rows-per-part", default=100_000, show_default=True, hidden=True)
@click.option(
    "--opt",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backbone option, e.g. --opt layers=2,3 --opt weights=w.safetensors.",
)
def embed(source: str, backbone: str, out_dir: str, options: tuple[str, ...], **kwargs) -> None:
    """Embed the images of SOURCE (a folder or a .parquet/.csv table) into a latent dataset."""
    from embedkit.embed import embed as run_embed

    result = run_embed(source, backbone, out_dir, backbone_options=parse_options(options), **kwargs)
    click.echo(result.summary())


def parse_options(pairs: tuple[str, ...]) -> dict:
    """``("layers=2,3", "pretrained=false")`` -> ``{"layers": "2,3", "pretrained": False}``."""
    parsed: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--opt")
        lowered = value.lower()
        parsed[key.strip()] = {"true": True, "false": False, "none": None}.get(lowered, value)
    return parsed


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
