"""``embedkit attributes``, ``cluster`` and ``centroids``: latent algebra on a dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from embedkit.algebra.attributes import AttributeVector

ID_COLUMN_HELP = "Id column of --labels (default: id, or the column that matches the latent ids)."
IN_SAMPLE_NOTE = (
    "* scored in-sample: a class has fewer than 2 rows, so none could be held out; "
    "auc and cohens_d are optimistic"
)


def shown_as_warning(text: str) -> bool:
    """Whether ``embedkit.cli.main`` already showed ``text`` as a ``warning:`` line (it
    records them in ``ctx.obj["warnings"]``), so a command need not print it again."""
    obj = click.get_current_context().obj
    return isinstance(obj, dict) and " ".join(text.split()) in obj.get("warnings", ())


def stats_table(found: list[AttributeVector]) -> str:
    """The vectors' stats as a text table; an in-sample AUC is marked ``*`` (footnoted)."""
    import pandas as pd

    table = pd.DataFrame([v.stats() for v in found])
    in_sample = table.pop("in_sample").astype(bool).tolist()
    table["auc"] = [
        f"{a:.3f}{'*' if marked else ''}" for a, marked in zip(table["auc"], in_sample, strict=True)
    ]
    text = table.to_string(index=False, float_format=lambda x: f"{x:.3f}")
    return f"{text}\n{IN_SAMPLE_NOTE}" if any(in_sample) else text


@click.command()
@click.argument("latents")
@click.option(
    "--column",
    "-c",
    "columns",
    multiple=True,
    required=True,
    help="Label column (repeatable). Booleans give one vector, others one per value.",
)
@click.option("--labels", default=None, help="Parquet/CSV labels table joined on id.")
@click.option("--id-column", default=None, help=ID_COLUMN_HELP)
@click.option("--positive", default=None, help="Value with the attribute (one --column only).")
@click.option("--negative", default=None, help="Value without it (default: all other values).")
@click.option("--out", "-o", default=None, help="Save the vectors to this Parquet table.")
def attributes(
    latents: str,
    columns: tuple[str, ...],
    labels: str | None,
    id_column: str | None,
    positive: str | None,
    negative: str | None,
    out: str | None,
) -> None:
    """Attribute vectors (centroid with - centroid without) and how well they separate."""
    from embedkit.algebra.attributes import attribute_vector, attribute_vectors
    from embedkit.algebra.vector_table import save_vectors

    if positive is not None:
        if len(columns) != 1:
            raise click.BadParameter("--positive works with exactly one --column")
        found = [
            attribute_vector(
                latents,
                columns[0],
                positive=positive,
                negative=negative,
                labels=labels,
                id_column=id_column,
            )
        ]
    else:
        found, report = attribute_vectors(latents, columns, labels, id_column)
        if not shown_as_warning(str(report)):
            click.echo(str(report))
    click.echo(stats_table(found))
    if out:
        click.echo(f"saved {len(found)} vectors -> {save_vectors(found, out)}")


@click.command()
@click.argument("latents")
@click.option("-k", "k", type=int, required=True, help="Number of clusters.")
@click.option("--name", default="cluster", show_default=True, help="Column name to write.")
@click.option(
    "--normalize/--no-normalize",
    default=None,
    help="Spherical k-means (default: as the latents were stored).",
)
@click.option("--seed", default=0, show_default=True)
def cluster(latents: str, k: int, name: str, normalize: bool | None, seed: int) -> None:
    """k-means the latents; writes LATENTS/clusters/NAME.parquet (id, NAME, distance)."""
    from embedkit.algebra.clusters import kmeans

    result = kmeans(latents, k, seed=seed, normalize=normalize)
    path = result.save(latents, name)
    click.echo(f"{k} clusters, sizes {result.sizes.tolist()}, inertia {result.inertia:.4g}")
    click.echo(f"assignments -> {path}")


@click.command()
@click.argument("latents")
@click.option("--by", required=True, help="Label column to group by.")
@click.option("--labels", default=None, help="Parquet/CSV labels table joined on id.")
@click.option("--id-column", default=None, help=ID_COLUMN_HELP)
@click.option("--normalize", is_flag=True, help="Average unit vectors.")
@click.option("--out", "-o", default=None, help="Write label, n, centroid to this Parquet file.")
def centroids(
    latents: str,
    by: str,
    labels: str | None,
    id_column: str | None,
    normalize: bool,
    out: str | None,
) -> None:
    """Mean latent per label value."""
    from embedkit.algebra.clusters import centroids as compute

    frame = compute(latents, by=by, labels=labels, normalize=normalize, id_column=id_column)
    norms = frame["centroid"].map(lambda v: float((v**2).sum() ** 0.5))
    click.echo(frame.assign(norm=norms).drop(columns="centroid").to_string(index=False))
    if out:
        frame.assign(centroid=frame["centroid"].map(list)).to_parquet(out)
        click.echo(f"centroids -> {out}")
