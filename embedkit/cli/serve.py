"""``embedkit serve``: the browser explorer of a latent dataset."""

from __future__ import annotations

import click


@click.command("serve")
@click.argument("latents")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 opens it to other machines.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the explorer in a browser.")
def serve(latents: str, port: int, host: str, open_browser: bool) -> None:
    """Explore LATENTS in a browser: grid, filters, neighbours, search by image, map, edits."""
    from embedkit.serve.server import serve as run

    run(latents, host=host, port=port, open_browser=open_browser)
