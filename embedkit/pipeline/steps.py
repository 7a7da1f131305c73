"""What both embedding engines share: the options and result of a run, the rows still to
embed (resume), their carried columns, and opening the writer.

The local engine (:mod:`embedkit.pipeline.local`) and the Ray engine
(:mod:`embedkit.pipeline.ray_engine`) build on these and never import each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from embedkit.errors import InputError
from embedkit.images.sources import Source, read_source
from embedkit.location import RemotePath
from embedkit.pipeline.resume import pending_rows
from embedkit.plugins.info import BackboneInfo
from embedkit.store.format import part_files
from embedkit.store.writer import LatentWriter

__all__ = [
    "CUDA_BATCH_SIZE",
    "DEFAULT_BATCH_SIZE",
    "EmbedOptions",
    "EmbedResult",
    "PendingRun",
    "carried_columns",
    "default_batch_size",
    "default_num_workers",
    "no_image_read",
    "start_run",
]

#: images per forward pass on a CPU (or MPS), and on a GPU: enough work per kernel to
#: fill it, still a few hundred MB of activations for a ViT-L in bf16
DEFAULT_BATCH_SIZE = 64
CUDA_BATCH_SIZE = 256


@dataclass(frozen=True)
class EmbedOptions:
    """Every option of :func:`embedkit.embed` that does not choose the engine; both
    engines take these (see ``embed`` for what each means). ``batch_size=None``: the
    device's default (:func:`default_batch_size`)."""

    batch_size: int | None = None
    num_workers: int | None = None
    device: str | None = None
    normalize: bool = False
    dtype: str = "float32"
    path_column: str = "path"
    id_column: str | None = None
    retry_errors: bool = False
    update: bool = False
    rows_per_part: int = 100_000
    progress: bool = True
    backbone_options: dict | None = None


@dataclass(frozen=True)
class EmbedResult:
    """What one run of :func:`embed` did."""

    path: Path | RemotePath
    embedded: int
    skipped: int
    errors: int
    seconds: float
    stale: int = 0  # images changed since embedded and left as they were (see update=)
    replaced: int = 0  # images changed since embedded whose latents were replaced

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        changed = f", {self.replaced} changed images re-embedded" if self.replaced else ""
        stale = f", {self.stale} changed images left stale (--update)" if self.stale else ""
        return (
            f"embedded {self.embedded} images ({self.images_per_second:.1f}/s), "
            f"skipped {self.skipped} already present, {self.errors} errors{changed}{stale} "
            f"-> {self.path}"
        )


def default_batch_size(device_type: str) -> int:
    """Images per forward pass when none is asked for: larger on CUDA."""
    return CUDA_BATCH_SIZE if device_type == "cuda" else DEFAULT_BATCH_SIZE


def default_num_workers() -> int:
    """One decode worker per core (at most 8): workers sleep once the prefetch queue is
    full, so a model-bound run loses little, and a decode-bound one gains a core
    (measured on 2 cores: 1.7x the images/s of one worker with the pixels backbone)."""
    return max(1, min(8, os.cpu_count() or 2))


def carried_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """The carried columns, Arrow-typed from whole columns rather than batch by batch.

    Otherwise a first batch whose values are all missing (an object column of
    None/True, lists) would fix that column's type as null, and every later batch
    with a value would then fail to cast.
    """
    carried = rows.drop(columns=["id", "path"])
    if carried.columns.empty:
        return carried
    try:
        table = pa.Table.from_pandas(carried, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputError(f"carried columns cannot be stored ({exc})") from exc
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def no_image_read(
    out_dir: Path | RemotePath, written: int, skipped: int, errors: int
) -> InputError | None:
    """The error for a run that wrote nothing because no image could be read."""
    if written == 0 and skipped == 0 and not part_files(out_dir):
        return InputError(
            f"no image in the source could be read ({errors} errors); nothing was written"
        )
    return None


@dataclass
class PendingRun:
    """A run about to embed: the rows still to do, their carried columns, the writer."""

    rows: pd.DataFrame
    carried: pd.DataFrame | None
    skipped: int
    writer: LatentWriter
    stale: int = 0
    replaced: int = 0

    def result(self, embedded: int, errors: int, seconds: float) -> EmbedResult:
        """The run's :class:`EmbedResult`."""
        path = self.writer.path
        return EmbedResult(path, embedded, self.skipped, errors, seconds, self.stale, self.replaced)


def start_run(
    source: Source, info: BackboneInfo, out_dir: Path | RemotePath, options: EmbedOptions
) -> PendingRun:
    """Read the source, open the writer (refusing another backbone's dataset), and keep
    the rows not yet embedded."""
    rows = read_source(source, path_column=options.path_column, id_column=options.id_column)
    writer = LatentWriter(
        out_dir,
        info,
        normalized=options.normalize,
        dtype=options.dtype,
        rows_per_part=options.rows_per_part,
    )
    try:
        pending = pending_rows(rows, out_dir, options.retry_errors, options.update)
        carried = carried_columns(pending.rows) if not pending.rows.empty else None
    except BaseException:
        writer.close()  # releases the dataset's lock
        raise
    if carried is not None and carried.columns.empty:
        carried = None
    return PendingRun(
        pending.rows, carried, pending.skipped, writer, pending.stale, pending.replaced
    )
