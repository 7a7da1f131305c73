"""The Ray engine: the embedding pipeline of :mod:`embedkit.embed`, spread over a Ray cluster.

::

    driver: read_source -> _pending (resume) -> ray.data.from_pandas(row, path)
        │
        ▼  map_batches(_decode): Ray tasks, load_image + backbone.preprocess (no weights)
        │  failures become rows with an error reason, never exceptions
        ▼  map_batches(_Encoder): an actor pool, one model per actor (num_gpus=1 on GPUs)
        │
    driver: iter_batches -> the same LatentWriter as the local engine (parts, metadata, errors)

Everything on either side of Ray is the local engine's own code, so a dataset written by
either engine is the same dataset. Ray is optional: ``pip install 'embedkit[ray]'``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from embedkit import errors as embedkit_errors
from embedkit.backbone import Backbone, BackboneInfo
from embedkit.embed import (
    EmbedResult,
    _carried_columns,
    _collate,
    _ImageDataset,
    _pending,
    _worker_init,
)
from embedkit.errors import BackboneError, EmbedkitError, InputError
from embedkit.registry import load_backbone
from embedkit.sources import Source, read_source
from embedkit.store import part_files
from embedkit.writer import LatentWriter

__all__ = ["ACTORS_ENV", "embed_with_ray"]

#: environment variable giving the number of model actors (the CLI has no flag for it)
ACTORS_ENV = "EMBEDKIT_RAY_ACTORS"
MISSING_RAY = "the ray engine needs Ray: pip install 'embedkit[ray]'"
#: rows per input block: enough blocks to keep every decode slot busy, few enough to be cheap
MAX_BLOCK_ROWS = 4096
#: host memory an actor reserves beyond its weights (measured: ~0.6 GiB with torch, ~1.3 GiB
#: running timm/resnet18 at batch 32)
ACTOR_MEMORY_SLACK = 3 << 29
_ERROR_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|NotFound)): (.+)$")
_PROBE = Image.new("RGB", (64, 64), (128, 96, 64))


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # the [data] extra
    except ImportError:
        raise EmbedkitError(MISSING_RAY) from None
    return ray


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local Ray on this machine.

    True when this call initialized Ray: the caller then calls ``ray.shutdown()``, which
    stops a local Ray it started and only disconnects from a cluster it joined.
    """
    if ray.is_initialized():
        return False
    ray.init(
        address=address or None,
        num_cpus=None,  # a local Ray counts the cores itself (cgroup limits included)
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


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
    batch: dict[str, np.ndarray], preprocess: Callable, shape: tuple[int, ...], dtype: np.dtype
) -> dict[str, np.ndarray]:
    """A Ray task: paths -> preprocessed pixels; unreadable images get an ``error`` reason."""
    _worker_init(0)
    images = _ImageDataset([str(p) for p in batch["path"]], preprocess)
    good, tensors, failed = _collate([images[i] for i in range(len(images))])
    pixels = np.zeros((len(images), *shape), dtype=dtype)
    if good:
        pixels[good] = tensors.numpy()
    errors = np.full(len(images), "", dtype=object)
    for i, reason in failed:
        errors[i] = reason
    return {"row": batch["row"], "pixels": pixels, "error": errors}


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
            self.backbone = load_backbone(info, device=device)
        else:
            self.backbone = shipped.to(device)
        self.normalize = normalize
        self.dim = info.dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.asarray([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(good), self.dim), dtype=np.float32)
        if good.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            if self.backbone.device.type == "cuda":
                pixels = pixels.pin_memory()
            out = self.backbone.encode(pixels)
            if self.normalize:
                out = torch.nn.functional.normalize(out, dim=1)
            vectors[good] = out.numpy()
        return {"row": batch["row"], "error": batch["error"], "embedding": vectors}


def _plan(
    ray: ModuleType, device: str | None, actors: int | None, gpus_per_actor: float | None
) -> dict[str, Any]:
    """Resources: one GPU per actor where the cluster has GPUs, else CPU actors on half the
    cores (the other half decodes). ``$EMBEDKIT_RAY_ACTORS`` sets the actor count."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus > 0 and (device is None or device.startswith("cuda")) else 0.0
    if gpus_per_actor < 0:
        raise InputError(f"gpus_per_actor must be >= 0, got {gpus_per_actor}")
    if actors is None and os.environ.get(ACTORS_ENV):
        try:
            actors = int(os.environ[ACTORS_ENV])
        except ValueError:
            value = os.environ[ACTORS_ENV]
            raise InputError(f"${ACTORS_ENV} must be an integer, got {value!r}") from None
    if actors is None:
        if gpus_per_actor > 0:
            actors = max(1, int(gpus / gpus_per_actor))
        else:
            actors = max(1, int(cpus) // 2)
    if actors < 1:
        raise InputError(f"the ray engine needs at least one actor, got {actors}")
    small = cpus < 2  # a one-core cluster: actor and decode tasks must share the core
    actor_cpus = 0.5 if small else 1.0
    if gpus_per_actor == 0:
        actors = min(actors, max(1, int(cpus - 1)))  # leave a core to decode, or it deadlocks
    return {
        "actors": actors,
        "actor_cpus": actor_cpus,
        "decode_cpus": 0.5 if small else 1.0,
        "gpus_per_actor": gpus_per_actor,
        "device": device or ("cuda" if gpus_per_actor > 0 else "cpu"),
        "cpus": cpus,
    }


@contextlib.contextmanager
def _quiet_data(ray: ModuleType) -> Iterator[None]:
    """Ray Data's progress bars and console logs off while we show ours (restored after;
    its log files keep everything). A worker's error comes back as one line instead, its
    traceback chained for ``--debug``."""
    context = ray.data.DataContext.get_current()
    consoles = [
        h
        for h in logging.getLogger("ray.data").handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    saved = context.enable_progress_bars, [h.level for h in consoles]
    context.enable_progress_bars = False
    for handler in consoles:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        context.enable_progress_bars = saved[0]
        for handler, level in zip(consoles, saved[1], strict=True):
            handler.setLevel(level)


def _task_pool(ray: ModuleType, size: int | None) -> dict[str, Any]:
    """``map_batches`` arguments capping concurrent tasks at ``size`` (None: no cap)."""
    if not size:
        return {}
    try:
        return {"compute": ray.data.TaskPoolStrategy(size=size)}
    except (AttributeError, TypeError):  # older Ray: no sized task pools
        return {"concurrency": size}


def _pipeline(
    ray: ModuleType,
    paths: np.ndarray,
    backbone: Backbone,
    shipped: Backbone | None,
    plan: dict[str, Any],
    batch_size: int,
    num_workers: int | None,
    normalize: bool,
) -> Any:
    """The Ray Dataset of ``{row, error, embedding}`` batches for ``paths`` (lazy)."""
    preprocess, shape, pixel_dtype = _preprocessor(backbone)
    slots = max(1, int(plan["cpus"]) * 4)
    block = min(MAX_BLOCK_ROWS, max(batch_size, math.ceil(len(paths) / slots)))
    frame = pd.DataFrame({"row": np.arange(len(paths)), "path": paths.astype(str)})
    data = ray.data.from_pandas([frame.iloc[i : i + block] for i in range(0, len(frame), block)])
    data = data.map_batches(
        _decode,
        batch_size=batch_size,
        batch_format="numpy",
        fn_kwargs={"preprocess": preprocess.preprocess, "shape": shape, "dtype": pixel_dtype},
        num_cpus=plan["decode_cpus"],
        **_task_pool(ray, num_workers),
    )
    return data.map_batches(
        _Encoder,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "info": backbone.info,
            "device": plan["device"],
            "normalize": normalize,
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


def _one_line(exc: BaseException) -> EmbedkitError:
    """A worker's failure as the one-line error the CLI shows.

    Ray ships a worker's exception as text (its traceback inside a ``RayTaskError``): the
    first ``module.Name: message`` line that is not Ray's own is the original error; an
    embedkit error comes back as its own class.
    """
    texts, seen, current = [], set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    for text in texts:
        for line in text.splitlines():
            match = _ERROR_LINE.match(line.strip())
            if match and not match.group(1).startswith("ray."):
                module, _, name = match.group(1).rpartition(".")
                ours = module == embedkit_errors.__name__
                cls = getattr(embedkit_errors, name, None) if ours else None
                if isinstance(cls, type) and issubclass(cls, EmbedkitError):
                    return cls(match.group(2))
                return EmbedkitError(f"the ray engine failed: {name}: {match.group(2)}")
    first = (str(exc).strip().splitlines() or [""])[0]
    return EmbedkitError(f"the ray engine failed: {type(exc).__name__}: {first}")


def embed_with_ray(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    normalize: bool = False,
    dtype: str = "float32",
    path_column: str = "path",
    id_column: str | None = None,
    retry_errors: bool = False,
    rows_per_part: int = 100_000,
    progress: bool = True,
    backbone_options: dict | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> EmbedResult:
    """:func:`embedkit.embed` on Ray: same arguments, same output, same resume.

    Args:
        ray_address: the cluster to join (``ray://head:10001``, ``auto``); default
            ``$RAY_ADDRESS``, else a local Ray on this machine's cores. A Ray already
            initialized in this process is used as is and not shut down.
        num_workers: cap on concurrent decode tasks (default: as many as Ray fits).
        device: the actors' device (default ``cuda`` when the cluster has GPUs, else cpu).
        actors: model replicas (default: ``$EMBEDKIT_RAY_ACTORS``, else one per GPU, or
            half the cluster's cores on a CPU-only cluster).
        gpus_per_actor: GPUs each actor reserves (default 1 where there are GPUs, else 0;
            0.5 puts two actors on a GPU).

    A ``backbone`` name is rebuilt in every actor from its :class:`BackboneInfo` (weights
    files must be readable on every node); a :class:`Backbone` object is shipped as is.
    """
    ray = _import_ray()
    started = time.monotonic()
    out_dir = Path(out_dir)
    rows = read_source(source, path_column=path_column, id_column=id_column)
    shipped: Backbone | None = None
    if isinstance(backbone, str):  # the driver's copy only gives info and preprocess
        backbone = load_backbone(backbone, device="cpu", **(backbone_options or {}))
    else:
        shipped = backbone
    writer = LatentWriter(
        out_dir, backbone.info, normalized=normalize, dtype=dtype, rows_per_part=rows_per_part
    )
    rows, skipped = _pending(rows, out_dir, retry_errors)
    if rows.empty:
        return EmbedResult(out_dir, 0, skipped, 0, time.monotonic() - started)
    carried = _carried_columns(rows)
    has_carried = len(carried.columns) > 0

    ours = _connect(ray, ray_address)
    errors: list[tuple[str, str]] = []
    bar = tqdm(total=len(rows), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    ids, paths = rows["id"].to_numpy(), rows["path"].to_numpy()
    try:
        plan = _plan(ray, device, actors, gpus_per_actor)
        data = _pipeline(ray, paths, backbone, shipped, plan, batch_size, num_workers, normalize)
        with writer, _quiet_data(ray):
            try:
                for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
                    good = np.asarray([not e for e in batch["error"]], dtype=bool)
                    take = batch["row"][good]
                    failed = batch["row"][~good]
                    errors += zip(paths[failed], map(str, batch["error"][~good]), strict=True)
                    if len(take):
                        writer.write(
                            ids[take],
                            paths[take],
                            batch["embedding"][good],
                            carried.iloc[take] if has_carried else None,
                        )
                    bar.update(len(good))
                    if len(failed):
                        bar.set_postfix(errors=len(errors))
            finally:
                writer.write_errors([s for s, _ in errors], [r for _, r in errors])
    except Exception as exc:
        if isinstance(exc, ray.exceptions.RayError) or type(exc).__module__.startswith("ray"):
            raise _one_line(exc) from exc  # a worker's error wrapped by Ray: its cause, one line
        raise
    finally:
        bar.close()
        if ours:
            ray.shutdown()
    if writer.rows_written == 0 and skipped == 0 and not part_files(out_dir):
        raise InputError(
            f"no image in the source could be read ({len(errors)} errors); nothing was written"
        )
    return EmbedResult(
        out_dir, writer.rows_written, skipped, len(errors), time.monotonic() - started
    )
