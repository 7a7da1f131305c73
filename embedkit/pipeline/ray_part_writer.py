"""A part writer on a Ray worker: it takes its share of the encoded stream (one
``streaming_split`` iterator, fed the blocks encoded on its node first), writes staged
parts into the dataset folder, and reports what it closed, the failed inputs and its
progress to the driver, which commits the parts.

The driver's run token proves the worker sees the same dataset folder (a shared file
system, or the same object-storage URI) before anything is written.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from embedkit.errors import InputError
from embedkit.location import RemotePath, locate
from embedkit.pipeline.ray_rows import EncodedRows, split_batch
from embedkit.store.format import LatentMeta
from embedkit.store.lock import STATE_DIR
from embedkit.store.staging import PartStager, StagedPart
from embedkit.store.tables import cast_rows, rows_table

__all__ = ["PartWriter", "Report", "check_run_token", "publish_run_token"]

#: a part writer reports at least this often while rows arrive (progress, errors)
REPORT_SECONDS = 1.0
RUN_TOKEN = "ray-run.token"


@dataclass
class Report:
    """What a part writer did since its last report."""

    node: str
    rows: int = 0  # inputs handled (written or failed)
    parts: list[StagedPart] = field(default_factory=list)
    failed: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    fatal: tuple[str, str] | None = None  # (path, reason): a plugin failed in preprocess


def publish_run_token(folder: Path | RemotePath) -> str:
    """Write a new token into the dataset's state folder for part writers to check."""
    token = uuid.uuid4().hex
    (folder / STATE_DIR / RUN_TOKEN).write_text(token)
    return token


def check_run_token(folder: str, token: str, node: str) -> None:
    """One line when this node does not see the driver's dataset folder."""
    try:
        seen = (locate(folder) / STATE_DIR / RUN_TOKEN).read_text()
    except (OSError, InputError):
        seen = None
    if seen != token:
        raise InputError(
            f"node {node[:12]} does not see the dataset folder {folder} the driver writes: "
            "with the ray engine every node writes parts there, so it must be on a file "
            "system every node shares, at the same path (or set EMBEDKIT_RAY_WRITES=driver)"
        )


class PartWriter:
    """A Ray actor (one per node) writing staged parts of the dataset at ``folder``."""

    def __init__(
        self,
        folder: str,
        token: str,
        schema: pa.Schema,
        meta: LatentMeta,
        part: dict[str, Any],
    ):
        import ray  # only ever built inside Ray

        self.node = ray.get_runtime_context().get_node_id()
        check_run_token(folder, token, self.node)
        self.folder, self.schema, self.meta = folder, schema, meta
        self.stager = PartStager(folder, schema, durable=True, **part)  # a folder or a URI

    def run(self, split: Any) -> Iterator[Report]:
        """Write every batch of ``split``, yielding :class:`Report` s (a streaming
        generator) at least every second while rows come. A failure drops the open part
        and is raised; a plugin failure ends the stream with a report naming it."""
        report, last = Report(self.node), time.monotonic()
        try:
            for batch in split.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = split_batch(batch)
                if rows.fatal is not None:  # nothing of this batch is written
                    report.fatal = rows.fatal
                    break
                report.parts += self._write(rows)
                report.rows += batch.num_rows
                report.failed[0].extend(rows.failed[0])
                report.failed[1].extend(rows.failed[1])
                if report.parts or report.failed[0] or time.monotonic() - last > REPORT_SECONDS:
                    yield report
                    report, last = Report(self.node), time.monotonic()
            report.parts += self.stager.close()
        except BaseException:
            self.stager.abort()
            raise
        yield report

    def _write(self, rows: EncodedRows) -> list[StagedPart]:
        if not len(rows.ids):
            return []
        table = rows_table(
            self.meta, rows.ids, rows.sources, rows.vectors, rows.columns, rows.stats
        )
        return self.stager.write(cast_rows(table, self.schema, self.folder))
