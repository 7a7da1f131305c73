"""The Ray engine: the embedding pipeline spread over a Ray cluster.

::

    driver: start_run (source, lock, resume) -> ray.data.from_arrow(id, path, carried)
        │
        ▼  map_batches(decode_rows): Ray tasks, load_image + backbone.preprocess (no weights)
        │  failures become rows with an error reason, never exceptions
        ▼  map_batches(Encoder): an actor pool, one model per actor (num_gpus=1 on GPUs)
        │
        ▼  streaming_split: a part writer per node stages parts in the dataset folder
        │  (or, EMBEDKIT_RAY_WRITES=driver: iter_batches to the driver's writer)
    driver: commits each part, records errors in the errors table

Everything on either side of Ray is shared with the local engine (:mod:`.steps`,
:mod:`embedkit.store`), so a dataset written by either engine is the same dataset. Ray is
optional: ``pip install 'embedkit[ray]'``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from tqdm.auto import tqdm

from embedkit.device import precision_name
from embedkit.images.sources import Source
from embedkit.location import locate
from embedkit.pipeline.ray_cluster import (
    connect,
    import_ray,
    one_line_error,
    plan_resources,
    quiet_data,
)
from embedkit.pipeline.ray_rows import carried_schema, input_table
from embedkit.pipeline.ray_stages import encoded_dataset
from embedkit.pipeline.ray_writes import Written, write_on_driver, write_on_workers, writes_mode
from embedkit.pipeline.steps import EmbedOptions, EmbedResult, PendingRun, no_image_read, start_run
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.info import BackboneInfo
from embedkit.plugins.registry import load_backbone

__all__ = ["RayEmbedResult", "embed_with_ray"]


@dataclass(frozen=True)
class RayEmbedResult(EmbedResult):
    """:class:`EmbedResult` of a Ray run, with the rows each node's part writer wrote
    (node id -> rows; empty when the driver wrote them)."""

    rows_by_node: dict[str, int] = field(default_factory=dict)


def embed_with_ray(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike,
    *,
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    writes: str | None = None,
    **options: Any,
) -> RayEmbedResult:
    """:func:`embedkit.embed` on Ray: same arguments, same output, same resume.

    Args:
        ray_address: the cluster to join (``ray://head:10001``, ``auto``); default
            ``$RAY_ADDRESS``, else a local Ray on this machine's cores. A Ray already
            initialized in this process is used as is and not shut down.
        actors: model replicas (default: ``$EMBEDKIT_RAY_ACTORS``, else one per GPU, or
            half the cluster's cores on a CPU-only cluster).
        gpus_per_actor: GPUs each actor reserves (default 1 where there are GPUs, else 0;
            0.5 puts two actors on a GPU).
        writes: who writes the parts: ``workers`` (a part writer per node; the output
            folder must be shared by every node) or ``driver`` (every vector travels to
            it). Default ``$EMBEDKIT_RAY_WRITES``, else ``workers``.

        options: the other options of :func:`embedkit.embed` (:class:`EmbedOptions`).

    A ``backbone`` name is rebuilt in every actor from its :class:`BackboneInfo` (weights
    files must be readable on every node); a :class:`Backbone` object is shipped as is.
    """
    opts = EmbedOptions(**options)  # the num_workers cap applies to decode tasks here
    mode = writes_mode(writes)
    ray = import_ray()
    started = time.monotonic()
    out_dir = locate(out_dir)  # a local folder, or a RemotePath for a URI
    shipped: Backbone | None = None
    if isinstance(backbone, str):  # the driver's copy only gives info and preprocess
        backbone = load_backbone(backbone, device="cpu", **(opts.backbone_options or {}))
    else:
        shipped = backbone
    ours = connect(ray, ray_address)
    try:
        plan = plan_resources(ray, opts.device, actors, gpus_per_actor)
        info = backbone.identified_info(precision=_actor_precision(plan["device"], backbone))
        run = start_run(source, info, out_dir, opts)
        with run.writer:
            written = _embed_pending(ray, run, (backbone, shipped, info), plan, opts, mode)
    except Exception as exc:
        if isinstance(exc, ray.exceptions.RayError) or type(exc).__module__.startswith("ray"):
            # a worker's error wrapped by Ray: its cause, in one line
            raise one_line_error(exc) from exc
        raise
    finally:
        if ours:
            ray.shutdown()
    failure = no_image_read(out_dir, run.writer.rows_written, run.skipped, written.errors)
    if failure is not None:
        raise failure
    result = run.result(run.writer.rows_written, written.errors, time.monotonic() - started)
    return RayEmbedResult(**vars(result), rows_by_node=written.rows_by_node)


def _embed_pending(
    ray: ModuleType,
    run: PendingRun,
    model: tuple[Backbone, Backbone | None, BackboneInfo],
    plan: dict[str, Any],
    opts: EmbedOptions,
    mode: str,
) -> Written:
    """Embed the run's pending rows on Ray; the run's writer records the result."""
    if run.rows.empty:
        return Written()
    backbone, shipped, info = model
    rows = input_table(run.rows, run.carried)
    run.writer.fix_schema(carried_schema(rows))  # before any row: every writer needs it
    bar = tqdm(
        total=rows.num_rows, unit="img", desc="embed", disable=not opts.progress, smoothing=0.1
    )
    with quiet_data(ray):
        data = encoded_dataset(ray, rows, backbone, shipped, plan, opts, info)
        if mode == "workers":
            written = write_on_workers(ray, data, run.writer, backbone.name, bar)
        else:
            written = write_on_driver(data, run.writer, backbone.name, bar)
    bar.close()
    return written


def _actor_precision(device: str, backbone: Backbone) -> str:
    """The precision the actors will run in (they check it when they start): the driver
    may have no GPU to ask, so a CUDA device is taken to do bf16 autocast."""
    if not device.startswith("cuda") or not backbone.autocast:
        return "fp32"
    return precision_name(torch.device(device)) if torch.cuda.is_available() else "bf16"
