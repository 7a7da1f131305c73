"""The ``embedkit`` command line: one small module per group of commands, each a thin
layer over the library (``app`` puts them together)."""

from embedkit.cli.app import cli, get_cli, main
from embedkit.cli.embed import parse_options

__all__ = ["cli", "get_cli", "main", "parse_options"]
