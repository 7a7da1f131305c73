"""``embedkit sweep``, ``interpolate`` and ``analogy``: latent edits drawn as PNG grids."""

from __future__ import annotations

import click


@click.command()
@click.argument("latents")
@click.option("--vectors", "vectors_file", required=True, help="Table from `attributes -o`.")
@click.option("--name", required=True, help="Vector name in the table, e.g. color=red.")
@click.option("--id", "ids", multiple=True, required=True, help="Row to edit (repeatable).")
@click.option("--alphas", default="-2,-1,0,1,2", show_default=True, help="Comma-separated.")
@click.option(
    "--mode",
    type=click.Choice(["auto", "decode", "neighbors"]),
    default="auto",
    show_default=True,
    help="Decode (AE/VAE) or show the nearest corpus image.",
)
@click.option("--out", "-o", required=True, help="PNG to write.")
def sweep(
    latents: str,
    vectors_file: str,
    name: str,
    ids: tuple[str, ...],
    alphas: str,
    mode: str,
    out: str,
) -> None:
    """Attribute sweep: each id's latent plus alpha times a named vector, as a PNG grid."""
    from embedkit.algebra.vector_table import load_vectors
    from embedkit.viz.pictures import attribute_sweep

    table = load_vectors(vectors_file)
    if name not in table:
        raise click.BadParameter(f"no vector {name!r}; have: {', '.join(table)}")
    values = [float(a) for a in alphas.split(",") if a.strip()]
    attribute_sweep(latents, table[name], list(ids), values, mode=mode, out=out)
    click.echo(f"sweep -> {out}")


@click.command()
@click.argument("latents")
@click.argument("start")
@click.argument("end")
@click.option("--steps", default=8, show_default=True)
@click.option(
    "--method", type=click.Choice(["lerp", "slerp", "both"]), default="both", show_default=True
)
@click.option(
    "--mode", type=click.Choice(["auto", "decode", "neighbors"]), default="auto", show_default=True
)
@click.option("--out", "-o", required=True, help="PNG to write.")
def interpolate(
    latents: str, start: str, end: str, steps: int, method: str, mode: str, out: str
) -> None:
    """Interpolate from START to END (ids or image files) and draw the strip."""
    from embedkit.viz.pictures import interpolation_strip

    methods = ("lerp", "slerp") if method == "both" else (method,)
    interpolation_strip(latents, start, end, steps, methods, mode=mode, out=out)
    click.echo(f"interpolation -> {out}")


@click.command()
@click.argument("latents")
@click.argument("a")
@click.argument("b")
@click.argument("c")
@click.option("--mode", type=click.Choice(["auto", "decode", "neighbors"]), default="auto")
@click.option("--out", "-o", required=True, help="PNG to write.")
def analogy(latents: str, a: str, b: str, c: str, mode: str, out: str) -> None:
    """Analogy a - b + c on three ids, decoded or as the nearest corpus image."""
    from embedkit.viz.pictures import analogy_grid

    analogy_grid(latents, [(a, b, c)], mode=mode, out=out)
    click.echo(f"analogy -> {out}")
