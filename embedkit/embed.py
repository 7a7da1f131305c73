"""The embedding pipeline: source rows -> decode/preprocess in workers -> backbone -> writer."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from embedkit.backbone import Backbone
from embedkit.errors import InputError
from embedkit.registry import load_backbone
from embedkit.sources import Source, load_image, read_source
from embedkit.store import error_files, open_latents, part_files, read_errors
from embedkit.writer import LatentWriter

__all__ = ["EmbedResult", "embed"]


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


class _ImageDataset(Dataset):
    """Decodes and preprocesses one image; failures come back as data, not exceptions."""

    def __init__(self, paths: list[str], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i])), None
        except Exception as exc:  # any decode/preprocess failure is recorded and skipped
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return i, None, f"{type(exc).__name__}: {reason}"[:300]


def _collate(items):
    good = [(i, t) for i, t, err in items if err is None]
    errors = [(i, err) for i, t, err in items if err is not None]
    indices = [i for i, _ in good]
    batch = torch.stack([t for _, t in good]) if good else None
    return indices, batch, errors


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the cores for the model


def default_num_workers() -> int:
    """One decode worker per core (at most 8): workers sleep once the prefetch queue is
    full, so a model-bound run loses little, and a decode-bound one gains a core
    (measured on 2 cores: 1.7x the images/s of one worker with the pixels backbone)."""
    return max(1, min(8, os.cpu_count() or 2))


def _pending(rows: pd.DataFrame, out_dir: Path, retry_errors: bool) -> tuple[pd.DataFrame, int]:
    """Drop rows already embedded (resume) and, unless retrying, rows that failed before."""
    done: set[str] = set(open_latents(out_dir).ids().tolist()) if part_files(out_dir) else set()
    if retry_errors:
        for f in error_files(out_dir):
            f.unlink()
    else:
        done |= set(read_errors(out_dir)["source"].tolist())
    keep = ~(rows["id"].isin(done) | rows["path"].isin(done))
    return rows[keep].reset_index(drop=True), int((~keep).sum())


def _carried_columns(rows: pd.DataFrame) -> pd.DataFrame:
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


def embed(
    source: Source,
    backbone: str | Backbone,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    normalize: bool = False,
    dtype: str = "float32",
    path_column: str = "path",
    id_column: str | None = None,
    retry_errors: bool = False,
    rows_per_part: int = 100_000,
    progress: bool = True,
    backbone_options: dict | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> EmbedResult:
    """Embed every image of ``source`` into the latent dataset at ``out_dir``.

    Re-running on the same ``out_dir`` skips ids already embedded (and inputs that
    failed before, unless ``retry_errors``), so an interrupted run resumes.

    Args:
        source: image folder, ``.parquet``/``.csv`` table, list of paths, or DataFrame.
        backbone: a registered name (``timm/resnet18``, ``vae:runs/x``) or a Backbone.
        out_dir: the latent dataset folder (created if missing).
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes decoding images (default: one per core).
        normalize: store L2-normalized vectors.
        dtype: ``float32`` or ``float16`` storage.
        engine: ``local`` (this process and its workers) or ``ray`` (a Ray cluster:
            :func:`embedkit.ray_engine.embed_with_ray`, see docs/scale.md).
        ray_address: the Ray cluster to join (default: ``$RAY_ADDRESS`` or a local Ray).

    Example:
        >>> embedkit.embed("photos/", "timm/resnet18", "latents/")
    """
    if engine == "ray":
        from embedkit.ray_engine import embed_with_ray

        return embed_with_ray(
            source,
            backbone,
            out_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            normalize=normalize,
            dtype=dtype,
            path_column=path_column,
            id_column=id_column,
            retry_errors=retry_errors,
            rows_per_part=rows_per_part,
            progress=progress,
            backbone_options=backbone_options,
            ray_address=ray_address,
        )
    if engine != "local":
        raise InputError(f"engine {engine!r} is not supported; use local or ray")
    if ray_address is not None:
        raise InputError("ray_address needs engine='ray' (--engine ray)")
    started = time.monotonic()
    out_dir = Path(out_dir)
    rows = read_source(source, path_column=path_column, id_column=id_column)
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, device=device, **(backbone_options or {}))
    elif device is not None:
        backbone.to(device)
    writer = LatentWriter(
        out_dir, backbone.info, normalized=normalize, dtype=dtype, rows_per_part=rows_per_part
    )
    rows, skipped = _pending(rows, out_dir, retry_errors)
    if rows.empty:
        return EmbedResult(out_dir, 0, skipped, 0, time.monotonic() - started)
    carried = _carried_columns(rows)
    has_carried = len(carried.columns) > 0
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(
        _ImageDataset(rows["path"].tolist(), backbone.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=backbone.device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    errors: list[tuple[str, str]] = []
    bar = tqdm(total=len(rows), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    with writer:
        try:
            for indices, batch, failed in loader:
                errors += [(rows["path"].iat[i], reason) for i, reason in failed]
                if indices:
                    take = np.asarray(indices)
                    vectors = backbone.encode(batch)
                    if normalize:
                        vectors = torch.nn.functional.normalize(vectors, dim=1)
                    writer.write(
                        rows["id"].to_numpy()[take],
                        rows["path"].to_numpy()[take],
                        vectors.numpy(),
                        carried.iloc[take] if has_carried else None,
                    )
                bar.update(len(indices) + len(failed))
                if failed:
                    bar.set_postfix(errors=len(errors))
        finally:
            writer.write_errors([s for s, _ in errors], [r for _, r in errors])
    bar.close()
    if writer.rows_written == 0 and skipped == 0 and not part_files(out_dir):
        raise InputError(
            f"no image in the source could be read ({len(errors)} errors); nothing was written"
        )
    return EmbedResult(
        out_dir, writer.rows_written, skipped, len(errors), time.monotonic() - started
    )
