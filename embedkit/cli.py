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
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine; ray: a Ray cluster (pip install 'embedkit[ray]').",
)
@click.option(
    "--address", "ray_address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS)."
)
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
@click.option("--id-column", default="id", show_default=True, help="Id column of --labels.")
@click.option("--positive", default=None, help="Value with the attribute (one --column only).")
@click.option("--negative", default=None, help="Value without it (default: all other values).")
@click.option("--out", "-o", default=None, help="Save the vectors to this Parquet table.")
def attributes(
    latents: str,
    columns: tuple[str, ...],
    labels: str | None,
    id_column: str,
    positive: str | None,
    negative: str | None,
    out: str | None,
) -> None:
    """Attribute vectors (centroid with - centroid without) and how well they separate."""
    import pandas as pd

    from embedkit import algebra, vectors

    if positive is not None:
        if len(columns) != 1:
            raise click.BadParameter("--positive works with exactly one --column")
        found = [
            algebra.attribute_vector(
                latents,
                columns[0],
                positive=positive,
                negative=negative,
                labels=labels,
                id_column=id_column,
            )
        ]
    else:
        found, report = algebra.attribute_vectors(latents, columns, labels, id_column)
        click.echo(str(report))
    table = pd.DataFrame([v.stats() for v in found])
    click.echo(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if out:
        click.echo(f"saved {len(found)} vectors -> {vectors.save_vectors(found, out)}")


@cli.command()
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
    from embedkit.cluster import kmeans

    result = kmeans(latents, k, seed=seed, normalize=normalize)
    path = result.save(latents, name)
    click.echo(f"{k} clusters, sizes {result.sizes.tolist()}, inertia {result.inertia:.4g}")
    click.echo(f"assignments -> {path}")


@cli.command()
@click.argument("latents")
@click.option("--by", required=True, help="Label column to group by.")
@click.option("--labels", default=None, help="Parquet/CSV labels table joined on id.")
@click.option("--normalize", is_flag=True, help="Average unit vectors.")
@click.option("--out", "-o", default=None, help="Write label, n, centroid to this Parquet file.")
def centroids(latents: str, by: str, labels: str | None, normalize: bool, out: str | None) -> None:
    """Mean latent per label value."""
    from embedkit.algebra import centroids as compute

    frame = compute(latents, by=by, labels=labels, normalize=normalize)
    norms = frame["centroid"].map(lambda v: float((v**2).sum() ** 0.5))
    click.echo(frame.assign(norm=norms).drop(columns="centroid").to_string(index=False))
    if out:
        frame.assign(centroid=frame["centroid"].map(list)).to_parquet(out)
        click.echo(f"centroids -> {out}")


@cli.command()
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
    from embedkit.pictures import attribute_sweep
    from embedkit.vectors import load_vectors

    table = load_vectors(vectors_file)
    if name not in table:
        raise click.BadParameter(f"no vector {name!r}; have: {', '.join(table)}")
    values = [float(a) for a in alphas.split(",") if a.strip()]
    attribute_sweep(latents, table[name], list(ids), values, mode=mode, out=out)
    click.echo(f"sweep -> {out}")


@cli.command()
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
    from embedkit.pictures import interpolation_strip

    methods = ("lerp", "slerp") if method == "both" else (method,)
    interpolation_strip(latents, start, end, steps, methods, mode=mode, out=out)
    click.echo(f"interpolation -> {out}")


@cli.command()
@click.argument("latents")
@click.argument("a")
@click.argument("b")
@click.argument("c")
@click.option("--mode", type=click.Choice(["auto", "decode", "neighbors"]), default="auto")
@click.option("--out", "-o", required=True, help="PNG to write.")
def analogy(latents: str, a: str, b: str, c: str, mode: str, out: str) -> None:
    """Analogy a - b + c on three ids, decoded or as the nearest corpus image."""
    from embedkit.pictures import analogy_grid

    analogy_grid(latents, [(a, b, c)], mode=mode, out=out)
    click.echo(f"analogy -> {out}")


@cli.command()
@click.argument("latents")
@click.option("--out", "-o", "out_dir", default=None, help="Folder (default: LATENTS/report).")
@click.option("--label", default=None, help="Column to colour the projection by.")
@click.option("--seed", default=0, show_default=True)
def report(latents: str, out_dir: str | None, label: str | None, seed: int) -> None:
    """Write an HTML report (neighbours, clusters, projection, decoder views) for LATENTS."""
    from pathlib import Path

    from embedkit.latents_report import latents_report

    target = out_dir or str(Path(latents) / "report")
    click.echo(f"report -> {latents_report(latents, target, label=label, seed=seed)}")


@cli.command()
@click.option("--out", "-o", "out_dir", default="demo-out", show_default=True)
@click.option("--quick", is_flag=True, help="A smaller corpus and shorter training (< 2 min).")
@click.option("--seed", default=0, show_default=True)
def demo(out_dir: str, quick: bool, seed: int) -> None:
    """The main job on the built-in corpus: train a VAE, embed, index, search, edit, report."""
    from embedkit.demo import run_demo

    click.echo(run_demo(out_dir, quick=quick, seed=seed).summary())


@cli.group()
def corpus() -> None:
    """Built-in labeled corpora."""


@corpus.command("shapes")
@click.argument("out_dir")
@click.option("--n", default=5000, show_default=True, help="Number of images.")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
def corpus_shapes(out_dir: str, n: int, size: int, seed: int) -> None:
    """Draw N labeled shape images into OUT_DIR (images/ + labels.parquet)."""
    from embedkit.corpus import make_shapes

    click.echo(f"labels -> {make_shapes(out_dir, n=n, size=size, seed=seed)}")


@cli.command("index")
@click.argument("latents")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True)
@click.option(
    "--kind", default="auto", show_default=True, help="auto|flat|ivf|hnsw|ivfpq or a faiss factory."
)
@click.option("--memory-budget", default=None, help="Bytes the index may use, e.g. 2GB.")
@click.option("--recall-sample", default=1000, show_default=True, help="Queries for recall@10.")
@click.option("--no-gpu", is_flag=True, help="Build on the CPU even when a GPU is present.")
def index_command(
    latents: str,
    metric: str,
    kind: str,
    memory_budget: str | None,
    recall_sample: int,
    no_gpu: bool,
) -> None:
    """Build a FAISS index in LATENTS/index/ and report its recall@10."""
    from embedkit.index import build_index

    built = build_index(
        latents,
        metric=metric,
        kind=kind,
        memory_budget=memory_budget,
        recall_sample=recall_sample,
        gpu=False if no_gpu else None,
    )
    info = built.info
    recall = "not measured" if info.recall is None else f"{info.recall:.3f}"
    recall = "exact" if info.kind == "flat" else recall
    params = " ".join(f"{k}={v}" for k, v in info.params.items()) or "-"
    click.echo(f"kind       {info.kind} ({info.factory}, {info.metric}) - {info.reason}")
    click.echo(f"ntotal     {info.ntotal:,}  dim {info.dim}")
    click.echo(f"recall@{info.k:<3} {recall}  params {params}")
    click.echo(f"built in   {info.build_seconds:.1f}s on {info.built_on}")
    click.echo(f"index   -> {built.path}")


@cli.command("search")
@click.argument("latents")
@click.option("--id", "ids", multiple=True, help="Query by latent id (repeatable).")
@click.option("--vector", "vector_file", default=None, help="Query vectors: a .npy [D] or [N, D].")
@click.option("--image", "images", multiple=True, help="Query by image file (repeatable).")
@click.option("-k", "k", default=10, show_default=True, help="Neighbours per query.")
@click.option("--include-self", is_flag=True, help="Keep the query row in --id results.")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default=None)
@click.option("--nprobe", type=int, default=None, help="Override the tuned IVF nprobe.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--out", "-o", "grid", default=None, help="Also draw the neighbours as a PNG grid.")
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
    grid: str | None,
) -> None:
    """Nearest neighbours of ids, vectors or images in LATENTS."""
    from embedkit.search import load_vector_file, neighbors

    frame = neighbors(
        latents,
        ids=list(ids) or None,
        vectors=load_vector_file(vector_file) if vector_file else None,
        images=list(images) or None,
        k=k,
        exclude_self=not include_self,
        metric=metric,
        nprobe=nprobe,
    )
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        import json

        click.echo(json.dumps(json.loads(frame.to_json(orient="records")), ensure_ascii=False))
    else:
        click.echo(frame.to_string(index=False))
    if grid:
        from embedkit.pictures import neighbour_grid

        neighbour_grid(latents, frame, out=grid)
        click.echo(f"grid -> {grid}", err=True)


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
