"""Every guide's examples stay valid: each `embedkit ...` command line in README.md and
docs/*.md parses against the real CLI, and each Python block compiles. (README's stories,
docs/plugins.md's example and the demo are also run for real elsewhere.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from embedkit.cli import get_cli

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def command_lines(path: Path) -> list[str]:
    text = "\n".join(code_blocks(path, "bash") + code_blocks(path, "console"))
    text = text.replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        line = line.removeprefix("$ ").split(" #")[0].split(">")[0].strip()
        if line.startswith("embedkit ") or re.match(r"^[A-Z_]+=\S+ embedkit ", line):
            lines.append(line[line.index("embedkit ") :])
    return lines


def parse(args: list[str]) -> None:
    """Parse like the CLI would, without running the command."""
    command: click.Command = get_cli()
    ctx = command.make_context("embedkit", list(args))
    while isinstance(command, click.Group):
        words = ctx._protected_args + ctx.args
        if not words:
            return
        name, command, rest = command.resolve_command(ctx, words)
        ctx = command.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_command_lines_parse(guide):
    for line in command_lines(guide):
        try:
            parse(shlex.split(line)[1:])
        except click.exceptions.Exit:
            pass  # --help / --version
        except click.BadParameter as exc:
            if "does not exist" not in exc.format_message():  # example paths are not here
                pytest.fail(f"{guide.name}: `{line}` does not parse: {exc.format_message()}")
        except click.ClickException as exc:
            pytest.fail(f"{guide.name}: `{line}` does not parse: {exc.format_message()}")


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_python_blocks_compile(guide):
    for n, block in enumerate(code_blocks(guide, "python")):
        compile(block, f"{guide.name} block {n}", "exec")


def test_every_guide_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for guide in GUIDES[1:]:
        assert f"docs/{guide.name}" in readme, f"README does not link docs/{guide.name}"
