"""The local engine: source rows -> decode/preprocess in DataLoader workers -> backbone
-> writer, on this machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embedkit.images.sources import Source
from embedkit.pipeline.decode import (
    DecodedBatch,
    ImageDataset,
    collate,
    encode_batch,
    plugin_failure,
    worker_init,
)
from embedkit.pipeline.steps import (
    EmbedOptions,
    EmbedResult,
    PendingRun,
    default_num_workers,
    no_image_read,
    start_run,
)
from embedkit.pipeline.writer_thread import WriterThread
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
    run = start_run(source, backbone.identified_info(), out_dir, options)
    if run.rows.empty:
        run.writer.close()
        return run.result(0, 0, time.monotonic() - started)
    workers = default_num_workers() if options.num_workers is None else options.num_workers
    loader = DataLoader(
        ImageDataset(run.rows["path"].tolist(), backbone.preprocess, backbone.decode_size),
        batch_size=options.batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=backbone.device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    errors = _encode_all(loader, backbone, run, options.normalize, options.progress)
    failure = no_image_read(out_dir, run.writer.rows_written, run.skipped, errors)
    if failure is not None:
        raise failure
    return run.result(run.writer.rows_written, errors, time.monotonic() - started)


def _encode_all(
    loader: DataLoader, backbone: Backbone, run: PendingRun, normalize: bool, progress: bool
) -> int:
    """Encode every batch the loader decodes and write it; returns the number of decode
    errors (recorded in the errors table as they happen)."""
    rows, writer = run.rows, run.writer
    ids, paths = rows["id"].to_numpy(), rows["path"].to_numpy()
    errors = 0
    bar = tqdm(total=len(rows), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    with writer:
        sink = WriterThread(writer)
        try:
            batch: DecodedBatch
            for batch in loader:
                if batch.plugin_failure is not None:
                    index, reason = batch.plugin_failure
                    raise plugin_failure(backbone.name, "preprocess", str(paths[index]), reason)
                if batch.errors:
                    failed = [paths[i] for i, _ in batch.errors]
                    sink.write_errors(failed, [r for _, r in batch.errors])
                errors += len(batch.errors)
                if batch.indices:
                    take = np.asarray(batch.indices)
                    where = f"a batch of {len(take)} images from {paths[take[0]]}"
                    vectors = encode_batch(backbone, batch.tensor, where, normalize)
                    carried = run.carried.iloc[take] if run.carried is not None else None
                    sink.write(ids[take], paths[take], vectors, carried, batch.stats)
                bar.update(len(batch.indices) + len(batch.errors))
                if batch.errors:
                    bar.set_postfix(errors=errors)
        finally:
            sink.finish()  # what was encoded is written, even when the run stops
    bar.close()
    return errors
