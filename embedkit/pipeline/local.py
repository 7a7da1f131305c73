"""The local engine: source rows -> decode/preprocess in DataLoader workers -> backbone
replicas (one per device) -> writer, on this machine."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embedkit.device import cudnn_autotune
from embedkit.images.sources import Source
from embedkit.location import RemotePath, locate
from embedkit.pipeline.decode import (
    DecodedBatch,
    ImageDataset,
    collate,
    plugin_failure,
    worker_init,
)
from embedkit.pipeline.replicas import ReplicaPool, build_replicas
from embedkit.pipeline.steps import (
    EmbedOptions,
    EmbedResult,
    PendingRun,
    default_batch_size,
    default_num_workers,
    no_image_read,
    start_run,
)
from embedkit.pipeline.writer_thread import WriterThread
from embedkit.plugins.backbone import Backbone

__all__ = ["embed_local"]


def embed_local(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike | RemotePath,
    options: EmbedOptions | None = None,
) -> EmbedResult:
    """:func:`embedkit.embed` with ``engine="local"``: one model replica per device of
    ``options.device`` (``cuda:0,1``, ``all``), one dataset."""
    options = options or EmbedOptions()
    started = time.monotonic()
    out_dir = locate(out_dir)
    replicas = build_replicas(backbone, options.device, options.backbone_options)
    first = replicas[0]
    run = start_run(source, first.identified_info(), out_dir, options)
    if run.rows.empty:
        run.writer.close()
        return run.result(0, 0, time.monotonic() - started)
    workers = default_num_workers() if options.num_workers is None else options.num_workers
    loader = DataLoader(
        ImageDataset(run.rows["path"].tolist(), first.preprocess, first.decode_size),
        batch_size=options.batch_size or default_batch_size(first.device.type),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=first.device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    with cudnn_autotune(replica.device for replica in replicas):
        errors = _encode_all(loader, replicas, run, options.normalize, options.progress)
    failure = no_image_read(out_dir, run.writer.rows_written, run.skipped, errors)
    if failure is not None:
        raise failure
    return run.result(run.writer.rows_written, errors, time.monotonic() - started)


def _encode_all(
    loader: DataLoader, replicas: list[Backbone], run: PendingRun, normalize: bool, progress: bool
) -> int:
    """Encode every batch the loader decodes and write it, in the loader's order; returns
    the number of decode errors (recorded in the errors table as they happen)."""
    ids, paths = run.rows["id"].to_numpy(), run.rows["path"].to_numpy()
    bar = tqdm(total=len(ids), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    with run.writer:
        sink = WriterThread(run.writer)

        def write(tag: tuple[np.ndarray, Any], vectors: np.ndarray) -> None:
            take, stats = tag
            carried = run.carried.iloc[take] if run.carried is not None else None
            sink.write(ids[take], paths[take], vectors, carried, stats)
            bar.update(len(take))

        pool = ReplicaPool(replicas, normalize)
        errors = 0
        try:
            batch: DecodedBatch
            for batch in loader:
                if batch.plugin_failure is not None:
                    index, reason = batch.plugin_failure
                    raise plugin_failure(replicas[0].name, "preprocess", str(paths[index]), reason)
                if batch.errors:
                    sink.write_errors(
                        [paths[i] for i, _ in batch.errors], [r for _, r in batch.errors]
                    )
                    errors += len(batch.errors)
                    bar.update(len(batch.errors))
                    bar.set_postfix(errors=errors)
                if batch.indices:
                    take = np.asarray(batch.indices)
                    where = f"a batch of {len(take)} images from {paths[take[0]]}"
                    if not pool.submit(batch.tensor, where, (take, batch.stats)):
                        break  # a replica failed: close() raises its error in its place
                for tag, vectors in pool.finished():
                    write(tag, vectors)
        finally:
            try:  # what was encoded before the run stopped is written, in order
                for tag, vectors in pool.close():
                    write(tag, vectors)
            finally:
                sink.finish()
    bar.close()
    return errors
