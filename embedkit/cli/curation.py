"""``embedkit duplicates``, ``outliers``, ``label-issues``, ``select`` and ``map``: curating a
corpus from its latents (the library is :mod:`embedkit.curation`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

FLOAT = "{:.4g}".format


def show(frame: pd.DataFrame, rows: int) -> None:
    """Print the first ``rows`` rows of ``frame`` as a text table."""
    if len(frame):
        click.echo(frame.head(rows).to_string(index=False, float_format=FLOAT))


@click.command()
@click.argument("latents")
@click.option("--threshold", type=float, default=None, help="Cosine similarity >= T (l2: <= T).")
@click.option("--auto", is_flag=True, help="Choose the threshold from the 1-NN distances.")
@click.option("-k", "k", default=10, show_default=True, help="Neighbours per row (k-NN search).")
@click.option("--name", default="duplicates", show_default=True, help="Table name to write.")
@click.option("--show", "shown", default=10, show_default=True, help="Rows of groups to print.")
def duplicates(
    latents: str, threshold: float | None, auto: bool, k: int, name: str, shown: int
) -> None:
    """Groups of near-duplicates (--threshold T or --auto).

    Writes LATENTS/duplicates/NAME.parquet: id, group, representative, distance."""
    from embedkit.curation.duplicates import DUPLICATES_DIR, near_duplicates
    from embedkit.curation.tables import result_path, write_frame
    from embedkit.curation.threshold import AutoThreshold
    from embedkit.store.dataset import open_latents

    if auto == (threshold is not None):
        raise click.UsageError("pass either --threshold T or --auto")
    ds = open_latents(latents)
    path = result_path(ds, DUPLICATES_DIR, name)
    frame = near_duplicates(ds, threshold=threshold, auto=auto, k=k, progress=True)
    meta = frame.attrs
    sign = ">=" if meta["metric"] == "cosine" else "<="
    unit = "cosine similarity" if meta["metric"] == "cosine" else "squared L2"
    click.echo(f"threshold  {unit} {sign} {meta['threshold']:.6g}")
    if meta["auto"]:
        click.echo(f"           {AutoThreshold(**meta['auto']).describe(meta['metric'])}")
    groups = frame["group"].nunique()
    click.echo(
        f"found      {groups:,} groups, {len(frame):,} rows ({len(frame) - groups:,} redundant "
        f"copies) among {meta['rows']:,} rows; searched by {meta['search']} over {meta['index']}"
    )
    show(frame, shown)
    click.echo(f"groups  -> {write_frame(frame, path)}")


@click.command()
@click.argument("latents")
@click.option("--top", default=20, show_default=True, help="Rows to list, loneliest first.")
@click.option("-k", "k", default=10, show_default=True, help="Neighbours averaged.")
@click.option("--out", "-o", default=None, help="Write every row's uniqueness to this Parquet.")
def outliers(latents: str, top: int, k: int, out: str | None) -> None:
    """The most unusual rows: largest mean distance to their k nearest neighbours."""
    from embedkit.curation.tables import write_frame
    from embedkit.curation.unusual import most_unique, uniqueness

    scores = uniqueness(latents, k=k, progress=True)
    found = most_unique(scores, top)
    click.echo(f"uniqueness: mean {scores.attrs['metric']} distance to {k} nearest neighbours")
    show(found, top)
    if out:
        click.echo(f"uniqueness -> {write_frame(scores, out)}")


@click.command("label-issues")
@click.argument("latents")
@click.option("--column", "-c", required=True, help="The carried label column to check.")
@click.option("-k", "k", default=10, show_default=True, help="Neighbours that vote.")
@click.option("--top", default=20, show_default=True, help="Rows to list, likeliest first.")
@click.option("--out", "-o", default=None, help="Write the whole ranking to this Parquet.")
def label_issues(latents: str, column: str, k: int, top: int, out: str | None) -> None:
    """Rows whose nearest neighbours mostly carry another label."""
    from embedkit.curation.mislabels import label_issues as find
    from embedkit.curation.tables import write_frame

    ranked = find(latents, column, k=k, progress=True)
    meta = ranked.attrs
    issues = int(ranked["issue"].sum())
    click.echo(
        f"{issues:,} of {meta['rows']:,} rows have a {k}-NN majority for another {column}; "
        f"it agrees with the label on {meta['agreement']:.1%} of rows (how well the "
        "latents separate the labels: below ~90% hard examples mix with mistakes)"
    )
    show(ranked[ranked["issue"]], top)
    if out:
        click.echo(f"ranking -> {write_frame(ranked, out)}")


@click.command()
@click.argument("latents")
@click.option("--diverse", "n", type=int, required=True, help="Rows to pick (greedy k-center).")
@click.option("--out", "-o", required=True, help="Parquet table to write (id, order, radius).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random comparison.")
def select(latents: str, n: int, out: str, seed: int) -> None:
    """A diverse subset of N rows; prints its coverage radius and a random subset's."""
    import numpy as np

    from embedkit.curation.diverse import coverage_radius, diverse_subset
    from embedkit.curation.tables import write_frame
    from embedkit.store.dataset import open_latents

    ds = open_latents(latents)
    subset = diverse_subset(ds, n, progress=True)
    ids = ds.ids()
    chance = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    random_radius = coverage_radius(ds, ids[chance].tolist())
    click.echo(
        f"{n:,} of {len(ids):,} rows; coverage radius {subset.attrs['radius']:.4g} "
        f"({subset.attrs['metric']} distance; a random subset of {n:,}: {random_radius:.4g})"
    )
    click.echo(f"subset -> {write_frame(subset, out)}")


@click.command("map")
@click.argument("latents")
@click.option("--method", type=click.Choice(["pca", "umap", "tsne"]), default="pca")
@click.option("--sample", default=50_000, show_default=True, help="Rows mapped (0: all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--color", "column", default=None, help="Colour the PNG by this column.")
@click.option("--out", "-o", default=None, help="Also draw the map as this PNG.")
def map_command(
    latents: str, method: str, sample: int, seed: int, column: str | None, out: str | None
) -> None:
    """A 2-D map of the latents, optionally drawn as a PNG.

    Writes LATENTS/maps/METHOD.parquet: id, x, y."""
    from embedkit.curation.maps import check_color_column, draw_map, map_colors, save_map

    if column and not out:
        raise click.UsageError("--color draws a PNG: pass -o map.png too")
    if column:
        check_color_column(latents, column)  # before the map is computed and written
    points, path = save_map(latents, method=method, sample=sample or None, seed=seed)
    click.echo(f"{len(points):,} points ({method}) -> {path}")
    if out:
        colors = map_colors(latents, points, column) if column else None
        title = f"{method} map of {latents}" + (f", coloured by {column}" if column else "")
        click.echo(f"map -> {draw_map(points, out, colors, title=title)}")
