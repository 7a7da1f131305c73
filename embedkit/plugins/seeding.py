"""Building models with torch's global random generator, one thread at a time.

A model's initial weights come from torch's one global generator. Two threads that build
models at once (the explorer loads its backbone in the background while a script embeds)
interleave their draws, so a model "seeded by name" gets other weights each run, which
the weights digest then refuses (measured: a served timm dataset failed its digest check
this way). Every first-party plugin builds its models inside :func:`model_building`; a
third-party plugin should too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["model_building"]

_LOCK = threading.RLock()


@contextmanager
def model_building(seed: int | None = None) -> Iterator[None]:
    """Hold the process-wide lock for building a model; with ``seed``, draw from torch's
    global generator seeded with it, and restore the generator afterwards."""
    import torch  # this module is imported by plugins that are themselves lazy

    with _LOCK:
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
