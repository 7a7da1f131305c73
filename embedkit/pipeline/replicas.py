"""Model replicas for the local engine: one copy of the backbone per device, one thread
each, all taking batches from one queue (the first free replica takes the next batch),
their latents handed back in the order the batches came.

A replica's thread queues batch i+1 before it waits for batch i's latents
(:func:`embedkit.pipeline.inflight.run_lagged`), so a GPU never idles on a copy; CUDA
kernels and copies release the GIL, so one process keeps every GPU busy. ``cpu,cpu``
runs the same code on two CPU replicas: how it is tested without GPUs.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from embedkit.device import resolve_devices
from embedkit.errors import BackboneError
from embedkit.pipeline.decode import plugin_failure, reason_of
from embedkit.pipeline.inflight import Landing, launch, run_lagged
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.registry import load_backbone

__all__ = ["ReplicaPool", "build_replicas", "check_same_precision"]

#: batches waiting for a free replica, per replica: one ready beside the one in work
JOBS_PER_REPLICA = 2


def build_replicas(
    backbone: str | Backbone, device: str | None, options: dict | None = None
) -> list[Backbone]:
    """One backbone per device of ``device`` (``cuda:0,1``, ``all``, ``cpu,cpu``; one
    device otherwise). The first is ``backbone`` itself (loaded, or moved to that
    device); the others are copies of it, so every replica holds the same weights."""
    if isinstance(backbone, str):
        devices = resolve_devices(device)
        first = device if len(devices) == 1 else str(devices[0])
        backbone = load_backbone(backbone, device=first, **(options or {}))
    elif device is not None:
        devices = resolve_devices(device)
        backbone.to(devices[0])
    else:
        return [backbone]  # a Backbone object stays where it is
    replicas = [backbone] + [_copy_to(backbone, d) for d in devices[1:]]
    check_same_precision(replicas)
    return replicas


def _copy_to(backbone: Backbone, device: torch.device) -> Backbone:
    try:
        twin = copy.deepcopy(backbone)
    except Exception as exc:
        raise BackboneError(
            f"backbone {backbone.name!r} cannot be copied for a replica on {device} "
            f"({reason_of(exc)}); run on one device"
        ) from exc
    twin.to(device)
    if twin.model is not None:  # now: copies of a model on a GPU must not pile up there
        twin.model.to(device)
    return twin


def check_same_precision(replicas: list[Backbone]) -> None:
    """Refuse replicas that would run in different precisions (one dataset records one)."""
    precisions = {str(r.device): r.precision for r in replicas}
    if len(set(precisions.values())) > 1:
        listed = ", ".join(f"{d} {p}" for d, p in precisions.items())
        raise BackboneError(
            f"the replicas would run in different precisions ({listed}); one dataset holds "
            "one precision: pass --device with GPUs of one kind"
        )


class _Job(NamedTuple):
    seq: int
    pixels: torch.Tensor
    where: str
    tag: Any


class _Done(NamedTuple):
    seq: int
    tag: Any
    vectors: np.ndarray | None
    error: BaseException | None


class ReplicaPool:
    """Encodes batches on every replica at once; :meth:`finished` and :meth:`close` give
    back ``(tag, vectors)`` in submission order. A replica's failure stops the pool:
    the batches before the failing one are still given back, then its error is raised,
    and nothing after it."""

    def __init__(self, replicas: list[Backbone], normalize: bool):
        self.normalize = normalize
        self._jobs: queue.Queue = queue.Queue(maxsize=JOBS_PER_REPLICA * len(replicas))
        self._done: queue.Queue = queue.Queue()  # bounded by the jobs queue and the lag
        self._lock = threading.Lock()
        self._failed_at: int | None = None  # the first batch that failed
        self._waiting: dict[int, _Done] = {}  # finished out of order
        self._submitted = self._next = 0
        self._halted = False
        self._threads = [
            threading.Thread(target=self._serve, args=(r,), name=f"embedkit-replica-{i}")
            for i, r in enumerate(replicas)
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    @property
    def failed(self) -> bool:
        """Whether a replica failed (later batches are not encoded)."""
        return self._failed_at is not None

    def submit(self, pixels: torch.Tensor, where: str, tag: Any) -> bool:
        """Queue a batch (blocks while every replica is busy); False once a replica has
        failed: stop submitting, :meth:`close` raises its error."""
        job = _Job(self._submitted, pixels, where, tag)
        while not self.failed:
            try:
                self._jobs.put(job, timeout=0.1)
            except queue.Full:
                continue
            self._submitted += 1
            return True
        return False

    def finished(self) -> Iterator[tuple[Any, np.ndarray]]:
        """The results ready now, in order (without waiting for the others)."""
        return self._in_order(block=False)

    def close(self) -> Iterator[tuple[Any, np.ndarray]]:
        """Stop the replicas once the batches queued are done; yields what is left, in
        order, up to a failure (raised at its place)."""
        for _ in self._threads:
            while self._alive():
                try:
                    self._jobs.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
        try:
            yield from self._in_order(block=True)
        finally:
            for thread in self._threads:
                thread.join()

    def _alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _in_order(self, block: bool) -> Iterator[tuple[Any, np.ndarray]]:
        while not self._halted and self._next < self._submitted:
            while self._next not in self._waiting:
                try:
                    done = self._done.get(timeout=0.1) if block else self._done.get_nowait()
                except queue.Empty:
                    if block and (self._alive() or not self._done.empty()):
                        continue
                    if block:  # a bug of ours, not the plugin's: never wait forever
                        raise BackboneError(
                            f"the replicas stopped before batch {self._next}"
                        ) from None
                    return
                self._waiting[done.seq] = done
            done = self._waiting.pop(self._next)
            self._next += 1
            if done.error is not None:
                self._halted = True
                raise done.error
            yield done.tag, done.vectors

    def _serve(self, replica: Backbone) -> None:
        if replica.device.type == "cuda" and replica.device.index is not None:
            torch.cuda.set_device(replica.device)  # this thread's default: the replica's GPU

        def start(job: _Job) -> Landing:
            if self._failed_at is not None and job.seq > self._failed_at:
                raise _Skipped
            return launch(replica, job.pixels, self.normalize)

        def finish(job: _Job, landing: Landing | None, error: BaseException | None) -> None:
            vectors = None
            try:
                if error is not None:
                    raise error
                assert landing is not None
                vectors = landing.wait()
            except _Skipped:  # after the failure: never given back (the pool halts there)
                pass
            except Exception as exc:
                error = plugin_failure(replica.name, "forward", job.where, reason_of(exc))
                error.__cause__ = exc
                self._fail(job.seq)
            self._done.put(_Done(job.seq, job.tag, vectors, error))

        run_lagged(iter(self._jobs.get, None), start, finish)

    def _fail(self, seq: int) -> None:
        with self._lock:
            if self._failed_at is None or seq < self._failed_at:
                self._failed_at = seq


class _Skipped(Exception):
    """A batch after a failure: not encoded, never given back."""
