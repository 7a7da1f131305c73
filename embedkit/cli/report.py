"""``embedkit report`` and ``embedkit demo``: HTML pages about latents."""

from __future__ import annotations

import click


@click.command()
@click.argument("latents")
@click.option("--out", "-o", "out_dir", default=None, help="Folder (default: LATENTS/report).")
@click.option("--label", default=None, help="Column to colour the projection by.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--compare",
    multiple=True,
    help="Other latents of the same images, probed beside LATENTS (repeatable).",
)
def report(
    latents: str, out_dir: str | None, label: str | None, seed: int, compare: tuple[str, ...]
) -> None:
    """Write an HTML report (neighbours, clusters, projection, decoder views, what the
    latents encode) for LATENTS."""
    from pathlib import Path

    from embedkit.viz.report import latents_report

    target = out_dir or str(Path(latents) / "report")
    written = latents_report(latents, target, label=label, seed=seed, compare=compare)
    click.echo(f"report -> {written}")


@click.command()
@click.option("--out", "-o", "out_dir", default="demo-out", show_default=True)
@click.option("--quick", is_flag=True, help="A smaller corpus and shorter training (< 2 min).")
@click.option("--seed", default=0, show_default=True)
def demo(out_dir: str, quick: bool, seed: int) -> None:
    """The main job on the built-in corpus: train a VAE, embed, index, search, edit, report."""
    from embedkit.demo import run_demo

    click.echo(run_demo(out_dir, quick=quick, seed=seed).summary())
