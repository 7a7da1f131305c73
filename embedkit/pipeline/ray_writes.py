"""Where the Ray engine's encoded rows are written.

- ``workers`` (the default): a part writer per node takes the batches encoded there
  (``Dataset.streaming_split`` with locality hints) and stages parts in the dataset
  folder; the driver only commits each part (checked, renamed to ``part-NNNNN-*``),
  records the failed inputs and counts progress. No vector reaches the driver.
- ``driver`` (``EMBEDKIT_RAY_WRITES=driver``): every batch travels to the driver, whose
  one writer writes it, as the local engine does. For clusters whose nodes do not share
  the output folder.

Either way the driver holds the dataset's lock, and a part becomes visible only once
complete: a killed run leaves staged files that the next run deletes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from tqdm.auto import tqdm

from embedkit.errors import InputError
from embedkit.pipeline.decode import plugin_failure
from embedkit.pipeline.ray_part_writer import PartWriter, Report, publish_run_token
from embedkit.pipeline.ray_rows import split_batch
from embedkit.pipeline.writer_thread import WriterThread
from embedkit.store.writer import LatentWriter

__all__ = ["WRITES", "WRITES_ENV", "Written", "write_on_driver", "write_on_workers", "writes_mode"]

#: environment variable choosing who writes the parts (the CLI has no flag for it)
WRITES_ENV = "EMBEDKIT_RAY_WRITES"
WRITES = ("workers", "driver")


def writes_mode(writes: str | None) -> str:
    """``writes``, else ``$EMBEDKIT_RAY_WRITES``, else ``workers``; checked."""
    mode = writes or os.environ.get(WRITES_ENV) or "workers"
    if mode not in WRITES:
        where = "writes" if writes else f"${WRITES_ENV}"
        raise InputError(f"{where} must be 'workers' or 'driver', got {mode!r}")
    return mode


@dataclass
class Written:
    """What the writes did: inputs that failed, and rows committed per writing node."""

    errors: int = 0
    rows_by_node: dict[str, int] = field(default_factory=dict)


def writer_nodes(ray: ModuleType) -> list[str]:
    """The nodes that get a part writer: every live node with CPUs or GPUs."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return sorted(
        n["NodeID"] for n in nodes if n["Resources"].get("CPU") or n["Resources"].get("GPU")
    )


def write_on_workers(
    ray: ModuleType, data: Any, writer: LatentWriter, backbone_name: str, bar: tqdm
) -> Written:
    """Stream ``data`` into part writers on every node; commit their parts as they close."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = writer_nodes(ray)
    token = publish_run_token(writer.path)
    part = {
        "rows_per_part": writer.rows_per_part,
        "seconds_per_part": writer.seconds_per_part,
        "row_group_rows": writer.row_group_rows,
    }
    actor = ray.remote(PartWriter)
    writers = [
        actor.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(str(writer.path), token, writer.schema, writer.meta, part)
        for node in nodes
    ]
    splits = data.streaming_split(len(nodes), equal=False, locality_hints=nodes)
    streams = [w.run.remote(split) for w, split in zip(writers, splits, strict=True)]
    written = Written()
    try:
        while streams:
            ready, _ = ray.wait(streams, num_returns=1)
            try:
                report = ray.get(next(ready[0]))
            except StopIteration:
                streams.remove(ready[0])
                continue
            _apply(report, writer, written, bar)
            if report.fatal is not None:
                raise plugin_failure(backbone_name, "preprocess", *report.fatal)
    finally:
        for w in writers:  # after a failure the others stop here; their open parts are lost
            ray.kill(w)
    return written


def _apply(report: Report, writer: LatentWriter, written: Written, bar: tqdm) -> None:
    """Commit the parts a writer reported, record its failed inputs, show progress."""
    for staged in report.parts:
        writer.commit(staged)
        written.rows_by_node[report.node] = written.rows_by_node.get(report.node, 0) + staged.rows
    writer.write_errors(*report.failed)  # also writes errors that are due
    written.errors += len(report.failed[0])
    bar.update(report.rows)
    if report.failed[0]:
        bar.set_postfix(errors=written.errors)


def write_on_driver(data: Any, writer: LatentWriter, backbone_name: str, bar: tqdm) -> Written:
    """Drain ``data`` into the driver's writer (behind a thread, as the local engine)."""
    written = Written()
    sink = WriterThread(writer)
    try:
        for batch in data.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = split_batch(batch)
            if rows.fatal is not None:
                raise plugin_failure(backbone_name, "preprocess", *rows.fatal)
            if rows.failed[0]:
                sink.write_errors(*rows.failed)
                written.errors += len(rows.failed[0])
                bar.set_postfix(errors=written.errors)
            if len(rows.ids):
                sink.write(rows.ids, rows.sources, rows.vectors, rows.columns, rows.stats)
            bar.update(batch.num_rows)
    finally:
        sink.finish()  # what was encoded is written, even when the run stops
    return written
