"""``embedkit embed`` and ``embedkit corpus shapes``: images in, latents out."""

from __future__ import annotations

import click


@click.command()
@click.argument("source")
@click.option("--backbone", "-b", required=True, help="Backbone name, e.g. timm/resnet18.")
@click.option("--out", "-o", "out_dir", required=True, help="Latent dataset folder to write.")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Images per forward pass [default: 256 on CUDA, else 64].",
)
@click.option("--workers", "num_workers", type=int, default=None, help="Decode worker processes.")
@click.option(
    "--device",
    default=None,
    help="cpu, cuda, cuda:N, mps; several GPUs, one replica each: cuda:0,1 or all "
    "(default: best available).",
)
@click.option("--normalize", is_flag=True, help="Store L2-normalized vectors.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32")
@click.option("--path-column", default="path", show_default=True, help="Table column of paths.")
@click.option("--id-column", default=None, help="Table column of ids (default: id, else path).")
@click.option("--retry-errors", is_flag=True, help="Retry inputs that failed in earlier runs.")
@click.option(
    "--update", is_flag=True, help="Re-embed images whose file changed since they were embedded."
)
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
    from embedkit.pipeline.embedding import embed as run_embed

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


@click.group()
def corpus() -> None:
    """Built-in labeled corpora."""


@corpus.command("shapes")
@click.argument("out_dir")
@click.option("--n", default=5000, show_default=True, help="Number of images.")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
def corpus_shapes(out_dir: str, n: int, size: int, seed: int) -> None:
    """Draw N labeled shape images into OUT_DIR (images/ + labels.parquet)."""
    from embedkit.images.corpus import make_shapes

    click.echo(f"labels -> {make_shapes(out_dir, n=n, size=size, seed=seed)}")
