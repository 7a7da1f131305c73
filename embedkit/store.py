"""Parquet latent datasets: layout, metadata, and fast reads.

A latent dataset is a folder::

    latents/
      part-00000.parquet   id, source, <carried columns>, embedding: fixed_size_list<float32>[D]
      part-00001.parquet   (each written to a hidden temp name, then renamed when complete)
      errors/part-*.parquet  source, reason — inputs that could not be embedded
      index/               FAISS index built from these latents

Every part carries the same schema metadata under the key ``embedkit``: the
backbone info, dim, normalization, dtype, embedkit version and creation time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from embedkit.backbone import BackboneInfo
from embedkit.errors import InputError

__all__ = ["LatentBatch", "LatentDataset", "LatentMeta", "open_latents"]

EMBEDDING = "embedding"
META_KEY = b"embedkit"
PART_GLOB = "part-*.parquet"
ERRORS_DIR = "errors"


@dataclass(frozen=True)
class LatentMeta:
    """Dataset-level metadata stored in every part's schema."""

    backbone: BackboneInfo
    dim: int
    normalized: bool = False
    dtype: str = "float32"
    embedkit_version: str = ""
    created: str = ""

    def to_bytes(self) -> bytes:
        data = {
            "backbone": json.loads(self.backbone.to_json()),
            "dim": self.dim,
            "normalized": self.normalized,
            "dtype": self.dtype,
            "embedkit_version": self.embedkit_version,
            "created": self.created,
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LatentMeta:
        data = json.loads(raw)
        return cls(
            backbone=BackboneInfo.from_json(json.dumps(data["backbone"])),
            dim=int(data["dim"]),
            normalized=bool(data.get("normalized", False)),
            dtype=data.get("dtype", "float32"),
            embedkit_version=data.get("embedkit_version", ""),
            created=data.get("created", ""),
        )


class LatentBatch(NamedTuple):
    """One batch from :meth:`LatentDataset.iter_batches`."""

    ids: np.ndarray
    vectors: np.ndarray
    table: pa.Table


def part_files(path: Path) -> list[Path]:
    return sorted(path.glob(PART_GLOB))


def read_meta(file: Path) -> LatentMeta:
    """The embedkit metadata of one part file, or an InputError naming the file."""
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{file} is not a readable Parquet file ({exc}); delete it and re-run"
        ) from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputError(f"{file} has no embedkit metadata; it was not written by embedkit")
    return LatentMeta.from_bytes(raw)


def _chunk_values(chunk: pa.Array, dim: int) -> np.ndarray:
    flat = chunk.flatten()  # respects slicing offsets
    if flat.null_count:
        raise InputError("embedding column holds nulls; the dataset is damaged")
    return flat.to_numpy(zero_copy_only=False).reshape(-1, dim)


def vectors_from_column(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list column -> ``[N, dim]`` numpy: zero-copy for one chunk, else one
    copy of each chunk straight into the result (no intermediate concatenation)."""
    chunks = [
        c for c in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]) if len(c)
    ]
    if len(chunks) == 1:
        return _chunk_values(chunks[0], dim)
    dtype = np.float16 if column.type.value_type == pa.float16() else np.float32
    out = np.empty((sum(len(c) for c in chunks), dim), dtype=dtype)
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = _chunk_values(chunk, dim)
        start += len(chunk)
    return out


def missing_ids_message(absent: Sequence[str], path: Path) -> str:
    """One line naming ids that are not in the latent dataset at ``path``."""
    shown = ", ".join(repr(a) for a in absent[:3]) + (" ..." if len(absent) > 3 else "")
    return (
        f"id {shown} not found in {path} ({len(absent)} missing); "
        "check the ids (see the `id` column) or re-run `embedkit index`"
    )


def _equals_filter(equals: dict[str, Any]) -> pc.Expression:
    expr = None
    for column, value in equals.items():
        if isinstance(value, (list, tuple, set, np.ndarray, pd.Series)):
            term = pc.field(column).isin(list(value))
        else:
            term = pc.field(column) == value
        expr = term if expr is None else expr & term
    return expr


class LatentDataset:
    """A read-only view of a latent dataset, optionally filtered.

    Example:
        >>> ds = open_latents("latents/")
        >>> ds.dim, len(ds), ds.backbone.name
        >>> X = ds.to_numpy()                     # [N, D] float32
        >>> red = ds.filter(color="red")          # a filtered view
    """

    def __init__(
        self,
        path: str | Path,
        files: Sequence[Path],
        meta: LatentMeta,
        expression: pc.Expression | None = None,
    ):
        self.path = Path(path)
        self.files = list(files)
        self.meta = meta
        self.expression = expression

    # -- metadata -----------------------------------------------------------
    @property
    def backbone(self) -> BackboneInfo:
        return self.meta.backbone

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def normalized(self) -> bool:
        return self.meta.normalized

    @cached_property
    def dataset(self) -> pads.Dataset:
        return pads.dataset([str(f) for f in self.files], format="parquet")

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema

    @property
    def columns(self) -> list[str]:
        """Every column but the embedding."""
        return [name for name in self.schema.names if name != EMBEDDING]

    def __len__(self) -> int:
        if self.expression is not None:
            return self.dataset.count_rows(filter=self.expression)
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def __repr__(self) -> str:
        return (
            f"<LatentDataset {self.path} rows={len(self)} dim={self.dim} "
            f"backbone={self.backbone.name}>"
        )

    def fingerprint(self) -> str:
        """Changes whenever a part is added, removed or rewritten."""
        digest = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            digest.update(f"{f.name}:{st.st_size}:{pq.ParquetFile(f).metadata.num_rows};".encode())
        return digest.hexdigest()[:16]

    # -- views --------------------------------------------------------------
    def filter(self, expression: pc.Expression | None = None, **equals: Any) -> LatentDataset:
        """Rows matching a pyarrow expression and/or ``column=value`` (a list means any of)."""
        missing = [c for c in equals if c not in self.columns]
        if missing:
            raise InputError(
                f"no column {missing[0]!r} in {self.path}; columns: {', '.join(self.columns)}"
            )
        expr = self.expression
        for term in (expression, _equals_filter(equals) if equals else None):
            if term is not None:
                expr = term if expr is None else expr & term
        return LatentDataset(self.path, self.files, self.meta, expr)

    # -- reads --------------------------------------------------------------
    def to_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows as a pyarrow Table (all columns, or those named)."""
        if columns is not None:
            unknown = [c for c in columns if c not in self.schema.names]
            if unknown:
                raise InputError(
                    f"no column {unknown[0]!r} in {self.path}; columns: "
                    f"{', '.join(self.schema.names)}"
                )
        return self.dataset.to_table(
            columns=list(columns) if columns else None, filter=self.expression
        )

    def to_numpy(self) -> np.ndarray:
        """All vectors as ``[N, D]`` (float32 or float16 as stored), with no per-row Python."""
        return vectors_from_column(self.to_table([EMBEDDING]).column(EMBEDDING), self.dim)

    def ids(self) -> np.ndarray:
        """Row ids in storage order (the order of :meth:`to_numpy`)."""
        return self.to_table(["id"]).column("id").to_numpy(zero_copy_only=False)

    def vectors_of(self, ids: Sequence[Any]) -> np.ndarray:
        """The stored vectors of ``ids`` in the order given (repeats allowed), read with
        one filtered scan rather than loading the whole dataset."""
        wanted = [str(i) for i in ids]
        if not wanted:
            return np.zeros((0, self.dim), dtype=np.float32)
        expr = pc.field("id").isin(wanted)
        if self.expression is not None:
            expr = expr & self.expression
        table = self.dataset.to_table(columns=["id", EMBEDDING], filter=expr)
        where = pc.index_in(pa.array(wanted, pa.string()), value_set=table.column("id"))
        if where.null_count:
            missing = where.is_null().to_numpy(zero_copy_only=False)
            raise InputError(
                missing_ids_message([wanted[i] for i in np.flatnonzero(missing)], self.path)
            )
        return vectors_from_column(table.column(EMBEDDING).take(where), self.dim)

    def to_pandas(
        self, columns: Sequence[str] | None = None, embedding: bool = True
    ) -> pd.DataFrame:
        """A DataFrame; ``embedding`` holds one numpy vector per row unless ``embedding=False``."""
        if columns is None:
            columns = self.columns + ([EMBEDDING] if embedding else [])
        table = self.to_table(columns)
        vectors = None
        if EMBEDDING in table.column_names:
            vectors = vectors_from_column(table.column(EMBEDDING), self.dim)
            table = table.drop_columns([EMBEDDING])
        frame = table.to_pandas()
        if vectors is not None:
            frame[EMBEDDING] = list(vectors)
        return frame

    def iter_batches(
        self, batch_size: int = 65536, columns: Sequence[str] | None = None
    ) -> Iterator[LatentBatch]:
        """Stream ``(ids, vectors, table)`` batches; memory stays bounded by ``batch_size``."""
        wanted = list(dict.fromkeys(["id", *(columns or []), EMBEDDING]))
        scanner = self.dataset.scanner(
            columns=wanted, filter=self.expression, batch_size=batch_size
        )
        for record_batch in scanner.to_batches():
            if record_batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([record_batch])
            yield LatentBatch(
                ids=table.column("id").to_numpy(zero_copy_only=False),
                vectors=vectors_from_column(table.column(EMBEDDING), self.dim),
                table=table.drop_columns([EMBEDDING]),
            )

    def errors(self) -> pd.DataFrame:
        """Inputs that could not be embedded: ``source``, ``reason``."""
        return read_errors(self.path)


def error_files(path: Path) -> list[Path]:
    """The parts of the errors table of the latent dataset folder ``path``."""
    return sorted((path / ERRORS_DIR).glob(PART_GLOB))


def read_errors(path: Path) -> pd.DataFrame:
    """The errors table (``source``, ``reason``) of the folder ``path``; works before any
    latent part exists (a run where every input failed)."""
    files = error_files(path)
    if not files:
        return pd.DataFrame({"source": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    return pads.dataset([str(f) for f in files], format="parquet").to_table().to_pandas()


def open_latents(path: str | Path | LatentDataset) -> LatentDataset:
    """Open a latent dataset folder written by :func:`embedkit.embed` or :func:`write_latents`."""
    if isinstance(path, LatentDataset):
        return path
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"latent dataset {path} does not exist; create it with `embedkit embed`")
    files = part_files(path)
    if not files:
        raise InputError(f"{path} holds no {PART_GLOB} files; it is empty or not a latent dataset")
    meta = read_meta(files[0])
    for f in files[1:]:
        other = read_meta(f)
        if (other.backbone, other.dim, other.normalized) != (
            meta.backbone,
            meta.dim,
            meta.normalized,
        ):
            raise InputError(
                f"{f} was made by {other.backbone.name} (dim {other.dim}) but "
                f"{files[0].name} by {meta.backbone.name} (dim {meta.dim}); "
                "a dataset must hold one backbone's latents"
            )
    return LatentDataset(path, files, meta)
