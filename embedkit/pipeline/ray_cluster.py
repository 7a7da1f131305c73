"""Sizing an embedding job on a Ray cluster: plan actors and decode tasks, quiet Ray
Data's console. Joining the cluster and one-line errors are :mod:`embedkit.ray_support`
(the index build uses them too)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from embedkit.errors import InputError
from embedkit.ray_support import MISSING_RAY, connect, import_ray, one_line_error

__all__ = [
    "ACTORS_ENV",
    "MISSING_RAY",
    "connect",
    "import_ray",
    "one_line_error",
    "plan_resources",
    "quiet_data",
    "task_pool",
]

#: environment variable giving the number of model actors (the CLI has no flag for it)
ACTORS_ENV = "EMBEDKIT_RAY_ACTORS"


def plan_resources(
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
def quiet_data(ray: ModuleType) -> Iterator[None]:
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


def task_pool(ray: ModuleType, size: int | None) -> dict[str, Any]:
    """``map_batches`` arguments capping concurrent tasks at ``size`` (None: no cap)."""
    if not size:
        return {}
    try:
        return {"compute": ray.data.TaskPoolStrategy(size=size)}
    except (AttributeError, TypeError):  # older Ray: no sized task pools
        return {"concurrency": size}
