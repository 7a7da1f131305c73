"""``embedkit index`` and ``embedkit search``: build a FAISS index (or bring it up to
date), query neighbours (within a filter, or a radius)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("index")
@click.argument("latents")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default=None,
              help="Default: the saved index's, else cosine.")  # fmt: skip
@click.option(
    "--kind",
    default=None,
    help="auto|flat|ivf|hnsw|ivfpq|ivfsq or a faiss factory (default: the saved index's, "
    "else auto).",
)
@click.option("--memory-budget", default=None, help="Bytes the index may use, e.g. 2GB.")
@click.option("--recall-sample", default=None, type=int, help="Queries for recall@10 [1000].")
@click.option("--no-gpu", is_flag=True, help="Build on the CPU even when a GPU is present.")
@click.option("--rebuild", is_flag=True, help="Rebuild even when an update in place would do.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: add the rows in shards on a Ray cluster and merge them (IVF and flat kinds).",
)
@click.option(
    "--shards", type=int, default=None, help="Shards of a --engine ray build [two per cluster CPU]."
)
@click.option(
    "--address",
    "ray_address",
    default=None,
    help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray).",
)
@click.option("--on-disk/--in-ram", "on_disk", default=None,
              help="IVF lists in a memory-mapped file, or in RAM [as saved].")  # fmt: skip
def index_command(
    latents: str,
    metric: str | None,
    kind: str | None,
    memory_budget: str | None,
    recall_sample: int | None,
    no_gpu: bool,
    rebuild: bool,
    engine: str,
    shards: int | None,
    ray_address: str | None,
    on_disk: bool | None,
) -> None:
    """Build a FAISS index in LATENTS/index/, or bring the saved one up to date (rows of
    new parts added, those of removed parts taken out; a rebuild when it no longer fits
    its choice), and report its recall@10."""
    from embedkit.index.update import update_index

    built = update_index(
        latents,
        metric=metric,
        kind=kind,
        memory_budget=memory_budget,
        recall_sample=recall_sample,
        gpu=False if no_gpu else None,
        rebuild=rebuild,
        progress=True,
        engine=engine,
        shards=shards,
        ray_address=ray_address,
        on_disk=on_disk,
    )
    info = built.info
    click.echo(_action_line(info.update))
    recall = "not measured" if info.recall is None else f"{info.recall:.3f}"
    if info.recall_lower is not None:
        recall += f" (bound {info.recall_lower:.3f} >= {info.target_recall}?"
        recall += " yes)" if info.recall_lower >= info.target_recall else " no)"
    recall = "exact" if info.kind == "flat" else recall
    params = " ".join(f"{k}={v}" for k, v in info.params.items()) or "-"
    click.echo(f"kind       {info.kind} ({info.factory}, {info.metric}) - {info.reason}")
    if info.selection:
        sel = info.selection
        measured = ", ".join(
            f"{c['kind']} {c['qps_predicted']:,.0f} q/s (recall {c['recall']:.3f})"
            + ("" if c["reached"] else " short")
            for c in sel["candidates"]
        )
        click.echo(
            f"chosen     by measurement on {sel['sample_rows']:,} rows in {sel['seconds']:.1f}s: "
            f"{measured}"
        )
    click.echo(f"ntotal     {info.ntotal:,}  dim {info.dim}")
    click.echo(f"recall@{info.k:<3} {recall}  params {params}")
    click.echo(f"built in   {info.build_seconds:.1f}s on {info.built_on}{_sharded(info.sharding)}")
    click.echo(f"index   -> {built.path}{_lists_line(info)}")


def _lists_line(info: Any) -> str:
    """`` (lists on disk: lists-ab12cd34.ivfdata)`` for an on-disk index, else nothing."""
    from embedkit.index.persist import file_of

    lists = file_of(info, "lists")
    return f" (lists on disk: {lists})" if lists else ""


def _sharded(sharding: dict) -> str:
    """`` (rows added in 8 shards on 3 nodes)`` for a sharded build, else nothing."""
    if not sharding:
        return ""
    return f" (rows added in {sharding['shards']} shards on {sharding['nodes']} node(s))"


def _action_line(update: dict) -> str:
    """What ``embedkit index`` did, and why (``IndexInfo.update``)."""
    words = {"build": "built", "rebuild": "rebuilt", "update": "updated in place",
             "unchanged": "up to date"}  # fmt: skip
    line = f"action     {words.get(update.get('action'), update.get('action'))}: {update['reason']}"
    if update.get("action") == "update":
        line += f" ({update['seconds']:.1f}s; recall {update['measured_on']})"
    return line


@click.command("search")
@click.argument("latents")
@click.option("--id", "ids", multiple=True, help="Query by latent id (repeatable).")
@click.option("--vector", "vector_file", default=None, help="Query vectors: a .npy [D] or [N, D].")
@click.option("--image", "images", multiple=True, help="Query by image file (repeatable).")
@click.option("-k", "k", default=10, show_default=True, help="Neighbours per query.")
@click.option("--include-self", is_flag=True, help="Keep the query row in --id results.")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default=None)
@click.option("--nprobe", type=int, default=None, help="Override the tuned IVF nprobe.")
@click.option(
    "--where",
    default=None,
    help="Search only rows matching a condition, e.g. \"color = 'red' AND year >= 2023\".",
)
@click.option(
    "--radius",
    type=float,
    default=None,
    help="Every neighbour with score >= R (cosine) or distance <= R (l2), instead of -k.",
)
@click.option("--update", is_flag=True, help="Bring a stale index up to date first.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--ids-from", default=None, help="Query ids from a file (.txt, or a table with id).")
@click.option("--images-from", default=None, help="Query by every image in a folder.")
@click.option(
    "--out", "-o", "out", default=None,
    help="Write the results: .parquet or .csv (a table), .png (a grid of the neighbours).",
)  # fmt: skip
def search_command(
    latents: str,
    ids: tuple[str, ...],
    vector_file: str | None,
    images: tuple[str, ...],
    k: int,
    include_self: bool,
    metric: str | None,
    nprobe: int | None,
    fmt: str,
    where: str | None,
    radius: float | None,
    update: bool,
    ids_from: str | None,
    images_from: str | None,
    out: str | None,
) -> None:
    """Nearest neighbours of ids, vectors or images in LATENTS (thousands at once with
    --ids-from / --images-from), among the rows matching --where, or all within --radius."""
    options = {"k": k, "exclude_self": not include_self, "metric": metric, "nprobe": nprobe,
               "radius": radius, "update": update}  # fmt: skip
    target = _latents(latents, where)
    frame = _search_frame(target, ids, vector_file, images, ids_from, images_from, options)
    if out and Path(out).suffix.lower() in (".parquet", ".csv"):
        from embedkit.location import locate

        _write_hits(frame, locate(out))
        click.echo(f"{frame['query'].nunique():,} queries, {len(frame):,} rows -> {out}")
        return
    grid = out
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        import json

        click.echo(json.dumps(json.loads(frame.to_json(orient="records")), ensure_ascii=False))
    else:
        click.echo(frame.to_string(index=False))
    if grid:
        from embedkit.viz.pictures import neighbour_grid

        neighbour_grid(latents, frame, out=grid)
        click.echo(f"grid -> {grid}", err=True)
    if frame.attrs.get("searched_on") == "gpu":  # the CPU is the rule, not worth a line
        click.echo("searched on gpu", err=True)
    if where:
        click.echo(f"{frame.attrs.get('search')}: {frame.attrs.get('search_reason')}", err=True)


def _latents(latents: str, where: str | None) -> Any:
    """LATENTS, or its rows matching ``--where``."""
    if not where:
        return latents
    from embedkit.index.where import parse_where
    from embedkit.store.dataset import open_latents

    ds = open_latents(latents)
    return ds.filter(parse_where(where, ds.columns))


def _search_frame(
    latents: Any,
    ids: tuple[str, ...],
    vector_file: str | None,
    images: tuple[str, ...],
    ids_from: str | None,
    images_from: str | None,
    options: dict,
) -> Any:
    from embedkit.index.batch_search import read_query_ids, search_many
    from embedkit.index.queries import load_vector_file
    from embedkit.index.search import neighbors

    if ids_from or images_from:
        if ids or images or vector_file or (ids_from and images_from):
            raise click.UsageError("--ids-from / --images-from replace the other queries")
        many = read_query_ids(ids_from) if ids_from else None
        return search_many(latents, ids=many, images=images_from, progress=True, **options)
    return neighbors(
        latents,
        ids=list(ids) or None,
        vectors=load_vector_file(vector_file) if vector_file else None,
        images=list(images) or None,
        **options,
    )


def _write_hits(frame: Any, path: Any) -> None:
    """The result table, written atomically (Parquet, or CSV by the suffix) to a local
    path or an object-storage URI."""
    from embedkit.files import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
