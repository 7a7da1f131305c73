"""``embedkit train ae|vae SOURCE -o RUN``: the training CLI, added through the plugin hook."""

from __future__ import annotations

from collections.abc import Callable

import click

__all__ = ["add_commands"]


def _channels(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("give comma-separated integers, e.g. 32,64,128,256") from None


def _options(kind: str) -> Callable:
    def decorate(func: Callable) -> Callable:
        options = [
            click.argument("source", type=click.Path(exists=True)),
            click.option("-o", "--out", required=True, type=click.Path(), help="Run folder."),
            click.option("--latent-dim", default=32, show_default=True, help="Latent size."),
            click.option(
                "--image-size",
                default=64,
                show_default=True,
                type=click.Choice(["32", "64", "128"]),
                help="Train at this resolution (images are resized).",
            ),
            click.option(
                "--channels",
                callback=_channels,
                help="Widths of the stride-2 stages, e.g. 32,64,128,256 for 64px.",
            ),
            click.option("--epochs", default=20, show_default=True),
            click.option("--batch-size", default=32, show_default=True),
            click.option("--lr", default=2e-3, show_default=True, help="Adam learning rate."),
            click.option("--seed", default=0, show_default=True),
            click.option("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best)."),
            click.option(
                "--resume/--no-resume",
                default=True,
                show_default=True,
                help="Continue from RUN's last checkpoint.",
            ),
            click.option("--val-fraction", default=0.1, show_default=True),
            click.option(
                "--patience",
                default=5,
                show_default=True,
                help="Early-stop after this many epochs without improvement (0: never).",
            ),
        ]
        if kind == "vae":
            options.append(
                click.option(
                    "--beta",
                    default=1.0,
                    show_default=True,
                    help="KL weight: 1 is a plain VAE; more: smoother latents, blurrier images.",
                )
            )
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _run(kind: str, source: str, out: str, image_size: str, **options) -> None:
    from embedkit_vae.training import train

    result = train(source, out, kind, image_size=int(image_size), **options)
    if result.epoch == result.resumed_from:
        click.echo(f"{out} already trained to epoch {result.epoch}; pass more --epochs to go on")
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    mse = f", val recon mse {best['val_recon_mse']:.5f}" if best else ""
    click.echo(
        f"best epoch {result.best_epoch}{mse}; weights in {out}/model.safetensors; "
        f"embed with backbone {kind}:{out}"
    )


def add_commands(cli: click.Group) -> None:
    """Add ``train ae`` and ``train vae`` (creating the ``train`` group if needed)."""
    group = cli.commands.get("train")
    if not isinstance(group, click.Group):
        group = click.Group("train", help="Train models on an image collection.")
        cli.add_command(group)

    @group.command("vae")
    @_options("vae")
    def train_vae(**kwargs) -> None:
        """Train a convolutional VAE on SOURCE (corpus folder or image folder)."""
        _run("vae", **kwargs)

    @group.command("ae")
    @_options("ae")
    def train_ae(**kwargs) -> None:
        """Train a convolutional autoencoder on SOURCE (corpus folder or image folder)."""
        _run("ae", **kwargs)
