"""The local engine: source rows -> decode/preprocess in DataLoader workers -> backbone
-> writer, on this machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embedkit.images.sources import Source
from embedkit.pipeline.steps import (
    EmbedOptions,
    EmbedResult,
    ImageDataset,
    PendingRun,
    collate,
    default_num_workers,
    no_image_read,
    start_run,
    worker_init,
)
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.registry import load_backbone

__all__ = ["embed_local"]


def embed_local(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike,
    options: EmbedOptions | None = None,
) -> EmbedResult:
    """:func:`embedkit.embed` with ``engine="local"``."""
    options = options or EmbedOptions()
    started = time.monotonic()
    out_dir = Path(out_dir)
    if isinstance(backbone, str):
        extra = options.backbone_options or {}
        backbone = load_backbone(backbone, device=options.device, **extra)
    elif options.device is not None:
        backbone.to(options.device)
    run = start_run(source, backbone.info, out_dir, options)
    if run.rows.empty:
        return EmbedResult(out_dir, 0, run.skipped, 0, time.monotonic() - started)
    workers = default_num_workers() if options.num_workers is None else options.num_workers
    loader = DataLoader(
        ImageDataset(run.rows["path"].tolist(), backbone.preprocess),
        batch_size=options.batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=backbone.device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    errors = _encode_all(loader, backbone, run, options.normalize, options.progress)
    failure = no_image_read(out_dir, run.writer.rows_written, run.skipped, len(errors))
    if failure is not None:
        raise failure
    seconds = time.monotonic() - started
    return EmbedResult(out_dir, run.writer.rows_written, run.skipped, len(errors), seconds)


def _encode_all(
    loader: DataLoader, backbone: Backbone, run: PendingRun, normalize: bool, progress: bool
) -> list[tuple[str, str]]:
    """Encode every batch the loader decodes and write it; returns the decode errors
    (also written to the errors table, even when the run stops early)."""
    rows, writer = run.rows, run.writer
    ids, paths = rows["id"].to_numpy(), rows["path"].to_numpy()
    errors: list[tuple[str, str]] = []
    bar = tqdm(total=len(rows), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    with writer:
        try:
            for indices, batch, failed in loader:
                errors += [(paths[i], reason) for i, reason in failed]
                if indices:
                    take = np.asarray(indices)
                    vectors = backbone.encode(batch)
                    if normalize:
                        vectors = torch.nn.functional.normalize(vectors, dim=1)
                    carried = run.carried.iloc[take] if run.carried is not None else None
                    writer.write(ids[take], paths[take], vectors.numpy(), carried)
                bar.update(len(indices) + len(failed))
                if failed:
                    bar.set_postfix(errors=len(errors))
        finally:
            writer.write_errors([s for s, _ in errors], [r for _, r in errors])
            bar.close()
    return errors
