"""The Ray engine: the embedding pipeline spread over a Ray cluster.

::

    driver: start_run (source, writer, resume) -> ray.data.from_pandas(row, path)
        │
        ▼  map_batches(_decode): Ray tasks, load_image + backbone.preprocess (no weights)
        │  failures become rows with an error reason, never exceptions
        ▼  map_batches(_Encoder): an actor pool, one model per actor (num_gpus=1 on GPUs)
        │
    driver: iter_batches -> the same LatentWriter as the local engine (parts, metadata, errors)

Everything on either side of Ray is shared with the local engine (:mod:`.steps`), so a
dataset written by either engine is the same dataset. Ray is optional:
``pip install 'embedkit[ray]'``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from embedkit.device import precision_name
from embedkit.errors import BackboneError, EmbedkitError
from embedkit.images.sources import Source
from embedkit.pipeline.decode import (
    ImageDataset,
    collate,
    encode_batch,
    plugin_failure,
    worker_init,
)
from embedkit.pipeline.ray_cluster import (
    connect,
    import_ray,
    one_line_error,
    plan_resources,
    quiet_data,
    task_pool,
)
from embedkit.pipeline.steps import (
    EmbedOptions,
    EmbedResult,
    PendingRun,
    default_batch_size,
    no_image_read,
    start_run,
)
from embedkit.pipeline.writer_thread import WriterThread
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.info import BackboneInfo
from embedkit.plugins.registry import load_backbone

__all__ = ["embed_with_ray"]

#: rows per input block: enough blocks to keep every decode slot busy, few enough to be cheap
MAX_BLOCK_ROWS = 4096
#: host memory an actor reserves beyond its weights (measured: ~0.6 GiB with torch, ~1.3 GiB
#: running timm/resnet18 at batch 32)
ACTOR_MEMORY_SLACK = 3 << 29
_PROBE = Image.new("RGB", (64, 64), (128, 96, 64))


def _preprocessor(backbone: Backbone) -> tuple[Backbone, tuple[int, ...], np.dtype]:
    """What decode tasks get: a copy of ``backbone`` without its model when that preprocesses
    alike (so weights are not shipped to every task), and the shape/dtype of one image."""
    try:
        want = backbone.preprocess(_PROBE)
    except Exception as exc:
        raise BackboneError(
            f"backbone {backbone.name!r} cannot preprocess a 64x64 RGB image ({exc})"
        ) from exc
    light = copy.copy(backbone)
    try:
        light.model = None
        same = torch.equal(light.preprocess(_PROBE), want)
    except Exception:  # preprocess needs the model after all: ship the whole backbone
        same = False
    dtype = want.numpy().dtype
    return (light if same else backbone), tuple(want.shape), dtype


def _model_bytes(backbone: Backbone) -> int:
    """Bytes of the backbone's weights and buffers (0 without a torch model)."""
    if backbone.model is None:
        return 0
    tensors = [*backbone.model.parameters(), *backbone.model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _decode(
    batch: dict[str, np.ndarray],
    preprocess: Callable,
    shape: tuple[int, ...],
    dtype: np.dtype,
    decode_size: int | None = None,
) -> dict[str, np.ndarray]:
    """A Ray task: paths -> preprocessed pixels and file stats; an unreadable image gets an
    ``error`` reason, a failing ``preprocess`` is flagged ``fatal`` (the driver stops)."""
    worker_init()
    images = ImageDataset([str(p) for p in batch["path"]], preprocess, decode_size)
    decoded = collate([images[i] for i in range(len(images))])
    n = len(images)
    pixels = np.zeros((n, *shape), dtype=dtype)
    size, mtime = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if decoded.indices:
        pixels[decoded.indices] = decoded.tensor.numpy()
        size[decoded.indices], mtime[decoded.indices] = decoded.stats
    errors = np.full(n, "", dtype=object)
    fatal = np.zeros(n, dtype=bool)
    for i, reason in decoded.errors:
        errors[i] = reason
    if decoded.plugin_failure is not None:
        index, reason = decoded.plugin_failure
        errors[index], fatal[index] = reason, True
    rows = batch["row"]
    return {
        "row": rows,
        "pixels": pixels,
        "error": errors,
        "fatal": fatal,
        "size": size,
        "mtime": mtime,
    }


class _Encoder:
    """A Ray actor holding one model: pixels -> latents (zeros where decoding failed)."""

    def __init__(
        self,
        info: BackboneInfo,
        device: str,
        normalize: bool,
        threads: int,
        shipped: Backbone | None = None,
    ):
        torch.set_num_threads(threads)
        if shipped is None:
            self.backbone = load_backbone(info, device=device)  # checks the weights digest
        else:
            self.backbone = shipped.to(device)
        expected = info.identity.get("precision")
        if expected is not None and self.backbone.precision != expected:
            raise EmbedkitError(
                f"a Ray actor on {device} runs {info.name} in {self.backbone.precision}, "
                f"not {expected} as the dataset records; pass --device or use matching GPUs"
            )
        self.normalize = normalize
        self.dim = info.dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.asarray([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(good), self.dim), dtype=np.float32)
        if good.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            if self.backbone.device.type == "cuda":
                pixels = pixels.pin_memory()
            where = f"a batch of {len(pixels)} images"
            vectors[good] = encode_batch(self.backbone, pixels, where, self.normalize)
        kept = {key: batch[key] for key in ("row", "error", "fatal", "size", "mtime")}
        return {**kept, "embedding": vectors}


def _pipeline(
    ray: ModuleType,
    paths: np.ndarray,
    backbone: Backbone,
    shipped: Backbone | None,
    plan: dict[str, Any],
    options: EmbedOptions,
    info: BackboneInfo,
) -> Any:
    """The Ray Dataset of ``{row, error, embedding}`` batches for ``paths`` (lazy)."""
    batch_size = options.batch_size or default_batch_size(plan["device"].split(":")[0])
    preprocess, shape, pixel_dtype = _preprocessor(backbone)
    slots = max(1, int(plan["cpus"]) * 4)
    block = min(MAX_BLOCK_ROWS, max(batch_size, math.ceil(len(paths) / slots)))
    frame = pd.DataFrame({"row": np.arange(len(paths)), "path": paths.astype(str)})
    data = ray.data.from_pandas([frame.iloc[i : i + block] for i in range(0, len(frame), block)])
    data = data.map_batches(
        _decode,
        batch_size=batch_size,
        batch_format="numpy",
        fn_kwargs={
            "preprocess": preprocess.preprocess,
            "shape": shape,
            "dtype": pixel_dtype,
            "decode_size": backbone.decode_size,
        },
        num_cpus=plan["decode_cpus"],
        **task_pool(ray, options.num_workers),
    )
    return data.map_batches(
        _Encoder,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "info": info,
            "device": plan["device"],
            "normalize": options.normalize,
            "threads": max(1, int(plan["actor_cpus"])),
            "shipped": shipped,
        },
        num_cpus=plan["actor_cpus"],
        num_gpus=plan["gpus_per_actor"],
        # host memory for one model; resources that differ from the decode tasks' also
        # keep Ray Data from fusing decoding into the actors (it must run beside them)
        memory=_model_bytes(backbone) + ACTOR_MEMORY_SLACK,
        compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
    )


def embed_with_ray(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike,
    *,
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    **options: Any,
) -> EmbedResult:
    """:func:`embedkit.embed` on Ray: same arguments, same output, same resume.

    Args:
        ray_address: the cluster to join (``ray://head:10001``, ``auto``); default
            ``$RAY_ADDRESS``, else a local Ray on this machine's cores. A Ray already
            initialized in this process is used as is and not shut down.
        actors: model replicas (default: ``$EMBEDKIT_RAY_ACTORS``, else one per GPU, or
            half the cluster's cores on a CPU-only cluster).
        gpus_per_actor: GPUs each actor reserves (default 1 where there are GPUs, else 0;
            0.5 puts two actors on a GPU).

        options: the other options of :func:`embedkit.embed` (:class:`EmbedOptions`).

    A ``backbone`` name is rebuilt in every actor from its :class:`BackboneInfo` (weights
    files must be readable on every node); a :class:`Backbone` object is shipped as is.
    """
    opts = EmbedOptions(**options)  # the num_workers cap applies to decode tasks here
    ray = import_ray()
    started = time.monotonic()
    out_dir = Path(out_dir)
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
        if run.rows.empty:
            run.writer.close()
            return run.result(0, 0, time.monotonic() - started)
        paths = run.rows["path"].to_numpy()
        data = _pipeline(ray, paths, backbone, shipped, plan, opts, info)
        with quiet_data(ray):
            errors = _write_all(data, run, backbone.name, opts.progress)
    except Exception as exc:
        if isinstance(exc, ray.exceptions.RayError) or type(exc).__module__.startswith("ray"):
            # a worker's error wrapped by Ray: its cause, in one line
            raise one_line_error(exc) from exc
        raise
    finally:
        if ours:
            ray.shutdown()
    failure = no_image_read(out_dir, run.writer.rows_written, run.skipped, errors)
    if failure is not None:
        raise failure
    return run.result(run.writer.rows_written, errors, time.monotonic() - started)


def _actor_precision(device: str, backbone: Backbone) -> str:
    """The precision the actors will run in (they check it when they start): the driver
    may have no GPU to ask, so a CUDA device is taken to do bf16 autocast."""
    if not device.startswith("cuda") or not backbone.autocast:
        return "fp32"
    return precision_name(torch.device(device)) if torch.cuda.is_available() else "bf16"


def _write_all(data: Any, run: PendingRun, backbone_name: str, progress: bool) -> int:
    """Drain the Ray Dataset into the writer; returns the number of decode errors
    (recorded in the errors table as they happen)."""
    ids, paths = run.rows["id"].to_numpy(), run.rows["path"].to_numpy()
    errors = 0
    bar = tqdm(total=len(ids), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    with run.writer:
        sink = WriterThread(run.writer)
        try:
            for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
                if batch["fatal"].any():
                    at = int(np.flatnonzero(batch["fatal"])[0])
                    where = str(paths[batch["row"][at]])
                    reason = str(batch["error"][at])
                    raise plugin_failure(backbone_name, "preprocess", where, reason)
                good = np.asarray([not e for e in batch["error"]], dtype=bool)
                take, failed = batch["row"][good], batch["row"][~good]
                if len(failed):
                    sink.write_errors(paths[failed], list(map(str, batch["error"][~good])))
                errors += len(failed)
                if len(take):
                    carried = run.carried.iloc[take] if run.carried is not None else None
                    stats = (batch["size"][good], batch["mtime"][good])
                    sink.write(ids[take], paths[take], batch["embedding"][good], carried, stats)
                bar.update(len(good))
                if len(failed):
                    bar.set_postfix(errors=errors)
        finally:
            sink.finish()  # what was encoded is written, even when the run stops
    bar.close()
    return errors
