"""The ``embedkit`` command group and entry point: commands come from the modules of
this package and from plugins; errors print as one line (``--debug`` for a traceback).

Importing this module imports click and nothing heavy: every command imports the
library inside its body, so ``embedkit --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import sys
import traceback
import warnings

import click

from embedkit.cli import algebra, curation, embed, index, pictures, plugins, probe, report, serve
from embedkit.errors import EmbedkitError
from embedkit.plugins.manager import call_hook

__all__ = ["cli", "get_cli", "main"]

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="embedkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """embedkit: embed image collections, find neighbours, do latent arithmetic."""
    ctx.obj = {"debug": debug, "warnings": []}  # main() records the warnings it shows


for command in (
    plugins.backbones,
    plugins.plugins,
    embed.embed,
    embed.corpus,
    algebra.attributes,
    algebra.cluster,
    algebra.centroids,
    probe.probe,
    pictures.sweep,
    pictures.interpolate,
    pictures.analogy,
    index.index_command,
    index.search_command,
    report.report,
    report.demo,
    serve.serve,
    curation.duplicates,
    curation.outliers,
    curation.label_issues,
    curation.select,
    curation.map_command,
):
    cli.add_command(command)

_plugin_commands_added: list[click.Group] = []


def get_cli() -> click.Group:
    """The CLI group with plugin commands added (once per group)."""
    if cli not in _plugin_commands_added:
        call_hook("register_commands", lambda plugin: {"cli": cli})
        _plugin_commands_added.append(cli)
    return cli


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A ``warnings.showwarning`` for the CLI: one ``warning: <message>`` line on stderr,
    never the file and source line; recorded in ``ctx.obj["warnings"]`` so a command can
    avoid printing the same text again."""
    text = " ".join(str(message).split())
    click.echo(f"warning: {text}", err=True)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and isinstance(ctx.obj, dict):
        ctx.obj.setdefault("warnings", []).append(text)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning embedkit errors into one-line messages and
    warnings into ``warning:`` lines."""
    group = get_cli()
    args = sys.argv[1:] if argv is None else argv
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            group.main(args=args, prog_name="embedkit", standalone_mode=False)
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
