"""The ids, sources and label columns of one dataset version, held as Arrow arrays:
pages with filters (Arrow compute, results kept for the next page), id lookups (binary
search over the ids sorted once), distinct values, selections for export."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedkit.serve.responses import ApiError, jsonable, short
from embedkit.store.dataset import LatentDataset

__all__ = ["MAX_DISTINCT", "LabelTable", "label_columns"]

#: a column with more distinct values than this gets no value list (no filter menu)
MAX_DISTINCT = 100
#: filtered row sets kept, so paging through one filter computes it once
KEPT_SELECTIONS = 16
#: up to this many ids are looked up by binary search; more by one hash of them
LOOKUPS_ONE_BY_ONE = 256
#: columns that are not labels: the id, and the server-side path of each image
NOT_LABELS = ("id", "source")


def label_columns(ds: LatentDataset) -> list[str]:
    """The carried columns shown as labels: all but the id and the source path."""
    return [c for c in ds.columns if c not in NOT_LABELS]


def _plain(column: pa.ChunkedArray) -> pa.Array:
    """One contiguous array; dictionary columns decoded (compares then need no unify)."""
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


class LabelTable:
    """``id``, ``source`` and label columns of a dataset, in storage order.

    Example:
        >>> table = LabelTable.read(ds)
        >>> total, rows = table.select_rows(q="0004", filters={"color": "red"})
        >>> table.items(rows[:60])
    """

    def __init__(self, table: pa.Table, labels: Sequence[str]):
        self.labels = list(labels)
        self.arrays = {name: _plain(table.column(name)) for name in table.column_names}
        self.rows = table.num_rows
        self._sorted: tuple[pa.Array, np.ndarray] | None = None
        self._selections: OrderedDict[tuple, pa.Array] = OrderedDict()
        self._distinct: dict[str, list | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def read(cls, ds: LatentDataset) -> LabelTable:
        """Read the id, source and label columns of ``ds`` (never the vectors)."""
        labels = label_columns(ds)
        wanted = ["id", *(["source"] if "source" in ds.columns else []), *labels]
        return cls(ds.to_table(wanted), labels)

    # -- lookups -------------------------------------------------------------
    def row_of(self, id_: str) -> int | None:
        """The storage row of ``id_``, or None: a binary search over the sorted ids."""
        ids, order = self._sorted_ids()
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[mid].as_py() < id_:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(ids) and ids[lo].as_py() == id_:
            return int(order[lo])
        return None

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of the ids given that are in the table, in storage order (others dropped)."""
        wanted = pa.array([str(i) for i in ids], pa.string())
        mask = pc.is_in(self.arrays["id"], value_set=wanted)
        return pc.indices_nonzero(mask).to_numpy()

    def _sorted_ids(self) -> tuple[pa.Array, np.ndarray]:
        with self._lock:
            if self._sorted is None:
                order = pc.sort_indices(self.arrays["id"])
                self._sorted = (self.arrays["id"].take(order), order.to_numpy())
            return self._sorted

    def source_of(self, row: int) -> str | None:
        """The image path recorded for ``row`` (None when it has none)."""
        sources = self.arrays.get("source")
        value = None if sources is None else sources[row].as_py()
        return value or None

    # -- rows as JSON -----------------------------------------------------------
    def labels_of(
        self, rows: Sequence[int] | np.ndarray, columns: Sequence[str] | None = None
    ) -> list[dict[str, Any] | None]:
        """``{column: value}`` of each row (all label columns, or those named), JSON-safe;
        None for a row number below 0 (an id not in the table)."""
        rows = np.asarray(rows, dtype=np.int64)
        names = self.labels if columns is None else list(columns)
        taken = pa.array(np.maximum(rows, 0))
        values = {c: self.arrays[c].take(taken).to_pylist() for c in names}
        return [
            {c: jsonable(values[c][i]) for c in names} if row >= 0 else None
            for i, row in enumerate(rows)
        ]

    def rows_in_order(self, ids: Sequence[str]) -> np.ndarray:
        """The row of each id, in the order given; -1 for an id not in the table."""
        if len(ids) <= LOOKUPS_ONE_BY_ONE:
            return np.array([-1 if (r := self.row_of(i)) is None else r for i in ids], np.int64)
        wanted = pa.array([str(i) for i in ids], pa.string())
        where = pc.index_in(self.arrays["id"], value_set=wanted)  # hashes the few, not all
        valid = where.is_valid()
        out = np.full(len(ids), -1, dtype=np.int64)
        out[where.filter(valid).to_numpy()] = pc.indices_nonzero(valid).to_numpy()
        return out

    def items(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """``{"id", "labels"}`` of each row."""
        ids = self.arrays["id"].take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
        return [
            {"id": i, "labels": labels} for i, labels in zip(ids, self.labels_of(rows), strict=True)
        ]

    # -- pages -----------------------------------------------------------------
    def page(
        self, offset: int, limit: int, q: str = "", filters: dict[str, list[str]] | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """``(total matching, items of rows offset .. offset + limit)``."""
        if not q and not filters:
            stop = min(self.rows, offset + limit)
            return self.rows, self.items(np.arange(offset, max(offset, stop)))
        rows = self.select_rows(q, filters or {})
        return len(rows), self.items(rows.slice(offset, limit).to_numpy())

    def select_rows(self, q: str, filters: dict[str, list[str]]) -> pa.Array:
        """Rows whose id holds ``q`` (any case) and whose every filtered column holds one
        of its values, as row numbers; the last few selections are kept."""
        key = (q, tuple(sorted((c, tuple(v)) for c, v in filters.items())))
        with self._lock:
            hit = self._selections.get(key)
            if hit is not None:
                self._selections.move_to_end(key)
                return hit
        mask = None
        if q:
            mask = pc.match_substring(self.arrays["id"], q, ignore_case=True)
        for column, values in filters.items():
            term = self._any_of(column, values)
            mask = term if mask is None else pc.and_kleene(mask, term)
        rows = pc.indices_nonzero(pc.fill_null(mask, False))
        with self._lock:
            self._selections[key] = rows
            while len(self._selections) > KEPT_SELECTIONS:
                self._selections.popitem(last=False)
        return rows

    def _any_of(self, column: str, values: list[str]) -> pa.Array:
        if column not in self.labels:
            raise ApiError(
                400, f"no label column {short(column)}; columns: {', '.join(self.labels) or 'none'}"
            )
        array = self.arrays[column]
        if pa.types.is_nested(array.type):
            raise ApiError(400, f"column {column!r} holds {array.type} values: no filter on it")
        try:
            wanted = [pa.scalar(v, pa.string()).cast(array.type) for v in values]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ApiError(
                400, f"column {column!r} holds {array.type} values; {short(values)} are not"
            ) from None
        if len(wanted) == 1:
            return pc.equal(array, wanted[0])
        return pc.is_in(array, value_set=pa.array(wanted, array.type))

    # -- what a column holds ------------------------------------------------------
    def distinct(self, column: str) -> list | None:
        """The distinct values of ``column`` (sorted, null last) when at most
        :data:`MAX_DISTINCT`, else None."""
        with self._lock:
            if column in self._distinct:
                return self._distinct[column]
        array = self.arrays[column]
        values = None
        nested = pa.types.is_nested(array.type) or pa.types.is_binary(array.type)
        if not nested:
            unique = pc.unique(array)
            if len(unique) <= MAX_DISTINCT:
                present = [v for v in jsonable(unique.to_pylist()) if v is not None]
                values = sorted(set(present), key=lambda v: (str(type(v)), v))
                values += [None] if len(present) < len(unique) else []
        with self._lock:
            self._distinct[column] = values
        return values

    def selection(self, ids: Sequence[str]) -> pa.Table:
        """The id and label columns of those ``ids`` that are in the table, storage order."""
        rows = pa.array(self.rows_of(ids).astype(np.int64))
        names = ["id", *self.labels]
        return pa.table({n: self.arrays[n].take(rows) for n in names})
