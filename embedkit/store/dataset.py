"""Reading a latent dataset: :class:`LatentDataset`, a read-only, filterable view.

A dataset on object storage (``open_latents("s3://bucket/latents")``) is read through
its ``pyarrow.fs`` file system; the vector cache is local to a folder and not used there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from embedkit.errors import InputError
from embedkit.location import RemotePath, locate
from embedkit.plugins.info import BackboneInfo
from embedkit.store.cache import cache_mode, load_cache, remove_stale, write_cache
from embedkit.store.format import (
    EMBEDDING,
    FILE_STAT_COLUMNS,
    PART_GLOB,
    LatentMeta,
    missing_ids_message,
    parquet_dataset,
    parquet_metadata,
    part_files,
    read_errors,
    read_meta,
    vectors_from_column,
)
from embedkit.store.vectors import (
    PartsChanged,
    PartStat,
    VectorRead,
    fingerprint_of,
    part_stats,
    read_columns,
    read_vectors,
)

__all__ = ["LatentBatch", "LatentDataset", "open_latents"]

HIDDEN_COLUMNS = frozenset({EMBEDDING, *FILE_STAT_COLUMNS})
#: reads start again when a part is replaced while they run; then they give up
READ_ATTEMPTS = 3
#: batches between hand-backs of memory the Arrow allocator keeps (see iter_batches)
RELEASE_EVERY = 4
T = TypeVar("T")


class LatentBatch(NamedTuple):
    """One batch from :meth:`LatentDataset.iter_batches`."""

    ids: np.ndarray
    vectors: np.ndarray
    table: pa.Table


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

    ``cache`` is the vector cache setting (``"auto"``, ``"on"``, ``"off"``; see
    ``store/cache.py``).

    Example:
        >>> ds = open_latents("latents/")
        >>> ds.dim, len(ds), ds.backbone.name
        >>> X = ds.to_numpy()                     # [N, D] float32, read-only
        >>> red = ds.filter(color="red")          # a filtered view
    """

    def __init__(
        self,
        path: str | Path | RemotePath,
        files: Sequence[Path | RemotePath],
        meta: LatentMeta,
        expression: pc.Expression | None = None,
        cache: bool | str | None = None,
    ):
        self.path = locate(path)
        self.files = list(files)
        self.meta = meta
        self.expression = expression
        self.cache = cache_mode(cache)

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

    @property
    def remote(self) -> bool:
        """Whether the dataset is on object storage (or another non-local file system)."""
        return isinstance(self.path, RemotePath)

    @cached_property
    def dataset(self) -> pads.Dataset:
        return parquet_dataset(self.files)

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema

    @property
    def columns(self) -> list[str]:
        """The id, source and carried columns: not the embedding, nor the file stats
        (``source_size``, ``source_mtime_ns``), which :meth:`to_table` reads by name."""
        return [name for name in self.schema.names if name not in HIDDEN_COLUMNS]

    def __len__(self) -> int:
        if self.expression is not None:
            return self.dataset.count_rows(filter=self.expression)
        return sum(parquet_metadata(f).num_rows for f in self.files)

    def __repr__(self) -> str:
        return (
            f"<LatentDataset {self.path} rows={len(self)} dim={self.dim} "
            f"backbone={self.backbone.name}>"
        )

    def fingerprint(self) -> str:
        """Changes whenever a part is added, removed or rewritten: it covers each part's
        name, size, row count, modification time and inode (a stat and the Parquet footer,
        never the data), so a same-size rewrite or a file renamed over a part counts."""
        return fingerprint_of(part_stats(self.files))

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
        return LatentDataset(self.path, self.files, self.meta, expr, self.cache)

    def with_cache(self, cache: bool | str | None) -> LatentDataset:
        """The same view with another vector cache setting."""
        return LatentDataset(self.path, self.files, self.meta, self.expression, cache)

    # -- reads --------------------------------------------------------------
    def to_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows as a pyarrow Table: :attr:`columns` and the embedding, or those named."""
        if columns is not None:
            unknown = [c for c in columns if c not in self.schema.names]
            if unknown:
                raise InputError(
                    f"no column {unknown[0]!r} in {self.path}; columns: "
                    f"{', '.join(self.schema.names)}"
                )
        wanted = list(columns) if columns else [*self.columns, EMBEDDING]
        return self.dataset.to_table(columns=wanted, filter=self.expression)

    def to_numpy(self) -> np.ndarray:
        """All vectors as ``[N, D]`` (float32 or float16 as stored), read-only: a memory
        map of the vector cache, or read straight from the parts' pages (copy it before
        writing into it)."""
        vectors = self._retrying(self._read_vectors)
        vectors.flags.writeable = False
        return vectors

    def ids(self) -> np.ndarray:
        """Row ids in storage order (the order of :meth:`to_numpy`)."""
        return self.to_table(["id"]).column("id").to_numpy(zero_copy_only=False)

    def vectors_of(self, ids: Sequence[Any]) -> np.ndarray:
        """The stored vectors of ``ids`` in the order given (repeats allowed), as a new
        array; only their rows are read (the id column, then their pages)."""
        wanted = [str(i) for i in ids]
        if not wanted:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._retrying(lambda: self._read_vectors_of(wanted))

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
        """Stream ``(ids, vectors, table)`` batches; memory stays bounded by ``batch_size``.

        Arrow's default read-ahead (16 batches, 4 parts) held ~0.6 GB of a 1M x 128
        dataset in flight, and its allocator keeps freed blocks: one batch ahead, and
        unused memory handed back every few batches, keep a pass flat (measured)."""
        wanted = list(dict.fromkeys(["id", *(columns or []), EMBEDDING]))
        scanner = self.dataset.scanner(
            columns=wanted, filter=self.expression, batch_size=batch_size,
            batch_readahead=1, fragment_readahead=1,
        )  # fmt: skip
        pool = pa.default_memory_pool()
        for count, record_batch in enumerate(scanner.to_batches()):
            if count % RELEASE_EVERY == RELEASE_EVERY - 1:
                pool.release_unused()
            if record_batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([record_batch])
            yield LatentBatch(
                ids=table.column("id").to_numpy(zero_copy_only=False),
                vectors=vectors_from_column(table.column(EMBEDDING), self.dim),
                table=table.drop_columns([EMBEDDING]),
            )

    # -- vectors from the parts or the cache ---------------------------------
    def _retrying(self, read: Callable[[], T]) -> T:
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return read()
            except PartsChanged:
                continue  # a part was replaced under us: describe the parts again
        try:
            return read()
        except PartsChanged as exc:
            raise InputError(
                f"{exc} kept changing while it was read; try again once writes to "
                f"{self.path} are done"
            ) from None

    def _read_vectors(self) -> np.ndarray:
        stats = part_stats(self.files)
        rows = None
        if self.expression is not None:
            table = read_columns(stats, self._filter_columns(["id"]))
            rows = table.filter(self.expression).column("__row").to_numpy()
        cached = self._cached(stats)
        if cached is not None:
            return cached if rows is None else cached[rows]
        read = read_vectors(stats, self.dim, self.meta.dtype, rows)
        if rows is None:
            self._refresh_cache(stats, read)
        return read.vectors

    def _read_vectors_of(self, wanted: list[str]) -> np.ndarray:
        stats = part_stats(self.files)
        table = read_columns(stats, self._filter_columns(["id"]))
        value_set = pa.array(sorted(set(wanted)), pa.string())
        table = table.filter(pc.is_in(table.column("id"), value_set=value_set))
        if self.expression is not None:
            table = table.filter(self.expression)
        where = pc.index_in(pa.array(wanted, pa.string()), value_set=table.column("id"))
        if where.null_count:
            missing = where.is_null().to_numpy(zero_copy_only=False)
            raise InputError(
                missing_ids_message([wanted[i] for i in np.flatnonzero(missing)], self.path)
            )
        rows = table.column("__row").to_numpy()[where.to_numpy()]
        unique, inverse = np.unique(rows, return_inverse=True)
        cached = self._cached(stats)
        if cached is not None:
            return cached[unique][inverse]
        return read_vectors(stats, self.dim, self.meta.dtype, unique).vectors[inverse]

    def _filter_columns(self, needed: list[str]) -> list[str]:
        """``needed``, and every column but the vectors when the view has a filter (which
        may name any of them)."""
        if self.expression is None:
            return needed
        return [n for n in self.schema.names if n != EMBEDDING]

    def _cached(self, stats: list[PartStat]) -> np.ndarray | None:
        if self.cache == "off" or not stats or self.remote:
            return None
        shape = (sum(s.rows for s in stats), self.dim)
        newest = max(s.mtime_ns for s in stats)
        dtype = np.dtype(self.meta.dtype)
        return load_cache(self.path, fingerprint_of(stats), shape, dtype, newest)

    def _refresh_cache(self, stats: list[PartStat], read: VectorRead) -> None:
        """After a full read: cache it if the setting says so (``auto``: when Arrow had to
        decode), and delete every other cache file, all stale now."""
        if self.cache == "off" or not stats or self.remote:
            return
        written = None
        if self.cache == "on" or read.decoded:
            newest = max(s.mtime_ns for s in stats)
            written = write_cache(self.path, fingerprint_of(stats), read.vectors, newest)
        remove_stale(self.path, keep=written.name if written else None)

    def errors(self) -> pd.DataFrame:
        """Inputs that could not be embedded: ``source``, ``reason``."""
        return read_errors(self.path)


def open_latents(
    path: str | Path | RemotePath | LatentDataset, cache: bool | str | None = None
) -> LatentDataset:
    """Open a latent dataset folder written by :func:`embedkit.embed` or :func:`write_latents`,
    or a URI of one on object storage (``s3://bucket/latents``, see docs/storage.md).

    ``cache``: the vector cache, ``"auto"``, True (``"on"``) or False (``"off"``); None
    reads ``$EMBEDKIT_VECTOR_CACHE`` (default ``auto``). See docs/embedding.md, Reading.
    """
    if isinstance(path, LatentDataset):
        return path if cache is None else path.with_cache(cache)
    path = locate(path)
    if not path.is_dir():
        raise InputError(f"latent dataset {path} does not exist; create it with `embedkit embed`")
    files = part_files(path)
    if not files:
        raise InputError(f"{path} holds no {PART_GLOB} files; it is empty or not a latent dataset")
    meta = read_meta(files[0])
    for f in files[1:]:
        other = read_meta(f)
        same_space = other.backbone.compatible_with(meta.backbone) and other.dim == meta.dim
        if not same_space or other.normalized != meta.normalized:
            raise InputError(
                f"{f} was made by {other.backbone.name} (dim {other.dim}) but "
                f"{files[0].name} by {meta.backbone.name} (dim {meta.dim}); "
                "a dataset must hold one backbone's latents"
            )
    return LatentDataset(path, files, meta, cache=cache)
