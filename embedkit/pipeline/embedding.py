"""``embedkit.embed``: one entry point that hands a run to the local or the Ray engine."""

from __future__ import annotations

import os

from embedkit.device import names_several
from embedkit.errors import InputError
from embedkit.images.sources import Source
from embedkit.location import RemotePath
from embedkit.pipeline.steps import EmbedOptions, EmbedResult
from embedkit.plugins.backbone import Backbone

__all__ = ["ENGINES", "embed"]

ENGINES = ("local", "ray")


def embed(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike | RemotePath,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    normalize: bool = False,
    dtype: str = "float32",
    path_column: str = "path",
    id_column: str | None = None,
    retry_errors: bool = False,
    update: bool = False,
    rows_per_part: int = 100_000,
    progress: bool = True,
    backbone_options: dict | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> EmbedResult:
    """Embed every image of ``source`` into the latent dataset at ``out_dir``.

    Re-running on the same ``out_dir`` skips images already embedded (recognised by their
    source path) and inputs that failed before (unless ``retry_errors``), so an
    interrupted run resumes. Only one run writes to a dataset at a time.

    Args:
        source: image folder, ``.parquet``/``.csv`` table, list of paths, or DataFrame.
        backbone: a registered name (``timm/resnet18``, ``vae:runs/x``) or a Backbone.
        out_dir: the latent dataset folder (created if missing), or a URI on object
            storage (``s3://bucket/latents``, see docs/storage.md; local engine only).
        batch_size: images per forward pass (default: 256 on CUDA, else 64).
        num_workers: DataLoader worker processes decoding images (default: one per core).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps``; or several, one model replica
            each, writing one dataset: ``cuda:0,cuda:1`` (``cuda:0,1``), ``all`` (every
            visible GPU). Default: ``$EMBEDKIT_DEVICE``, else cuda > mps > cpu.
        normalize: store L2-normalized vectors.
        dtype: ``float32`` or ``float16`` storage.
        update: re-embed images whose file changed (size or modification time) since
            they were embedded; without it they are reported as stale and left alone.
        engine: ``local`` (this process and its workers) or ``ray`` (a Ray cluster:
            :func:`embedkit.pipeline.ray_engine.embed_with_ray`, see docs/scale.md).
        ray_address: the Ray cluster to join (default: ``$RAY_ADDRESS`` or a local Ray).

    Example:
        >>> embedkit.embed("photos/", "timm/resnet18", "latents/")
    """
    options = EmbedOptions(
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        normalize=normalize,
        dtype=dtype,
        path_column=path_column,
        id_column=id_column,
        retry_errors=retry_errors,
        update=update,
        rows_per_part=rows_per_part,
        progress=progress,
        backbone_options=backbone_options,
    )
    if engine == "ray":
        if names_several(device):
            raise InputError(
                f"device {device!r} names several devices: Ray places one actor per GPU "
                "itself (--engine local spreads a run over the GPUs of one machine)"
            )
        from embedkit.pipeline.ray_engine import embed_with_ray

        ray_options = dict(vars(options))  # batch_size None: the actors' device decides
        return embed_with_ray(source, backbone, out_dir, ray_address=ray_address, **ray_options)
    if engine != "local":
        raise InputError(f"engine {engine!r} is not supported; use {' or '.join(ENGINES)}")
    if ray_address is not None:
        raise InputError("ray_address needs engine='ray' (--engine ray)")
    from embedkit.pipeline.local import embed_local

    return embed_local(source, backbone, out_dir, options)
