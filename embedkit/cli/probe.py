"""``embedkit probe``: what latent datasets encode, as one table of held-out scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from embedkit.cli.algebra import ID_COLUMN_HELP

if TYPE_CHECKING:
    import pandas as pd


def describe(table: pd.DataFrame) -> str:
    """One line saying how ``table`` was measured (from its ``attrs``)."""
    attrs = table.attrs
    metrics = ", ".join(f"{name} {metric}" for name, metric in attrs["metric"].items())
    sample = (
        f"; linear probes fit a random {attrs['linear_train_rows']:,} training rows"
        if attrs["linear_subsampled"]
        else ""
    )
    return (
        f"held out {attrs['test_size']:.0%} of the labeled rows (stratified, seed "
        f"{attrs['seed']}); k-NN k={attrs['k']} ({metrics}); accuracy for classes, R² for "
        f"numbers; baseline: the majority class (the training mean){sample}"
    )


def write_table(table: pd.DataFrame, path: str) -> None:
    """The table, written atomically: CSV by the suffix, else Parquet."""
    from pathlib import Path

    from embedkit.files import atomic_path

    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)


@click.command()
@click.argument("latents", nargs=-1, required=True)
@click.option(
    "--column",
    "-c",
    "columns",
    multiple=True,
    help="Label column (repeatable; default: every label column LATENTS carry).",
)
@click.option("--labels", default=None, help="Parquet/CSV labels table joined on id.")
@click.option("--id-column", default=None, help=ID_COLUMN_HELP)
@click.option(
    "--categorical", multiple=True, help="A column of numbers to probe as classes (repeatable)."
)
@click.option("-k", "k", default=10, show_default=True, help="Neighbours of the k-NN probe.")
@click.option("--test-size", default=0.25, show_default=True, help="Share of rows held out.")
@click.option("--seed", default=0, show_default=True, help="Seed of the held-out split.")
@click.option(
    "--metric",
    type=click.Choice(["cosine", "l2"]),
    default=None,
    help="k-NN metric (default: the dataset's index metric, else cosine).",
)
@click.option("--out", "-o", default=None, help="Also write the table (.parquet or .csv).")
def probe(
    latents: tuple[str, ...],
    columns: tuple[str, ...],
    labels: str | None,
    id_column: str | None,
    categorical: tuple[str, ...],
    k: int,
    test_size: float,
    seed: int,
    metric: str | None,
    out: str | None,
) -> None:
    """What LATENTS encode: held-out k-NN and linear-probe scores of label columns beside
    the baseline, per dataset and per stage (timm layers=)."""
    from embedkit.probes.measure import probe as measure

    table = measure(
        list(latents),
        list(columns) or None,
        labels=labels,
        id_column=id_column,
        categorical=categorical,
        k=k,
        test_size=test_size,
        seed=seed,
        metric=metric,
    )
    click.echo(describe(table))
    click.echo(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if out:
        write_table(table, out)
        click.echo(f"table -> {out}")
