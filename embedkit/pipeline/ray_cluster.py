"""Joining a Ray cluster and sizing a job on it: connect, plan actors and decode tasks,
quiet Ray Data's console, and turn a worker's error into one line."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from embedkit import errors as embedkit_errors
from embedkit.errors import EmbedkitError, InputError

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
MISSING_RAY = "the ray engine needs Ray: pip install 'embedkit[ray]'"
_ERROR_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|NotFound)): (.+)$")


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # the [data] extra
    except ImportError:
        raise EmbedkitError(MISSING_RAY) from None
    return ray


def connect(ray: ModuleType, address: str | None) -> bool:
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


def one_line_error(exc: BaseException) -> EmbedkitError:
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
