"""What both embedding engines share: pending rows (resume), carried columns, decoding
workers' dataset and collate, and the result of a run.

The local engine (:mod:`embedkit.pipeline.local`) and the Ray engine
(:mod:`embedkit.pipeline.ray_engine`) build on these and never import each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from embedkit.errors import InputError, first_line
from embedkit.images.decode import load_image
from embedkit.images.sources import Source, read_source
from embedkit.plugins.info import BackboneInfo
from embedkit.store.dataset import open_latents
from embedkit.store.format import error_files, part_files, read_errors
from embedkit.store.writer import LatentWriter

__all__ = [
    "EmbedOptions",
    "EmbedResult",
    "ImageDataset",
    "PendingRun",
    "carried_columns",
    "collate",
    "default_num_workers",
    "no_image_read",
    "pending_rows",
    "start_run",
    "worker_init",
]


@dataclass(frozen=True)
class EmbedOptions:
    """Every option of :func:`embedkit.embed` that does not choose the engine; both
    engines take these (see ``embed`` for what each means)."""

    batch_size: int = 64
    num_workers: int | None = None
    device: str | None = None
    normalize: bool = False
    dtype: str = "float32"
    path_column: str = "path"
    id_column: str | None = None
    retry_errors: bool = False
    rows_per_part: int = 100_000
    progress: bool = True
    backbone_options: dict | None = None


@dataclass(frozen=True)
class EmbedResult:
    """What one run of :func:`embed` did."""

    path: Path
    embedded: int
    skipped: int
    errors: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"embedded {self.embedded} images ({self.images_per_second:.1f}/s), "
            f"skipped {self.skipped} already present, {self.errors} errors -> {self.path}"
        )


class ImageDataset(Dataset):
    """Decodes and preprocesses one image; failures come back as data, not exceptions."""

    def __init__(self, paths: list[str], preprocess: Callable):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i])), None
        except Exception as exc:  # any decode/preprocess failure is recorded and skipped
            return i, None, f"{type(exc).__name__}: {first_line(exc)}"[:300]


def collate(items: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """A DataLoader batch: (indices decoded, their stacked tensors, [(index, error)])."""
    good = [(i, t) for i, t, err in items if err is None]
    errors = [(i, err) for i, t, err in items if err is not None]
    indices = [i for i, _ in good]
    batch = torch.stack([t for _, t in good]) if good else None
    return indices, batch, errors


def worker_init(_: int = 0) -> None:
    """Decode workers use one thread; the main process owns the cores for the model."""
    torch.set_num_threads(1)


def default_num_workers() -> int:
    """One decode worker per core (at most 8): workers sleep once the prefetch queue is
    full, so a model-bound run loses little, and a decode-bound one gains a core
    (measured on 2 cores: 1.7x the images/s of one worker with the pixels backbone)."""
    return max(1, min(8, os.cpu_count() or 2))


def pending_rows(rows: pd.DataFrame, out_dir: Path, retry_errors: bool) -> tuple[pd.DataFrame, int]:
    """Drop rows already embedded (resume) and, unless retrying, rows that failed before."""
    done: set[str] = set(open_latents(out_dir).ids().tolist()) if part_files(out_dir) else set()
    if retry_errors:
        for f in error_files(out_dir):
            f.unlink()
    else:
        done |= set(read_errors(out_dir)["source"].tolist())
    keep = ~(rows["id"].isin(done) | rows["path"].isin(done))
    return rows[keep].reset_index(drop=True), int((~keep).sum())


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


def no_image_read(out_dir: Path, written: int, skipped: int, errors: int) -> InputError | None:
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


def start_run(
    source: Source, info: BackboneInfo, out_dir: Path, options: EmbedOptions
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
    rows, skipped = pending_rows(rows, out_dir, options.retry_errors)
    carried = carried_columns(rows) if not rows.empty else None
    if carried is not None and carried.columns.empty:
        carried = None
    return PendingRun(rows, carried, skipped, writer)
