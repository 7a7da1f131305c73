"""Where a part's vectors lie in its file: the pages of the embedding column, found by
reading the page headers (Parquet's Thrift compact encoding) without decoding the data.

embedkit writes the vectors plain, uncompressed and without nulls (see ``parts.py``), so
each data page holds its floats as one run of little-endian bytes after the repetition
and definition levels. :func:`column_extents` finds those runs; :meth:`Extents.read`
copies any range of values straight from the file into numpy (one copy, like
``np.load``), which Arrow's list decoder cannot match (~0.15x of ``np.load``).

A column chunk stored any other way (compressed, dictionary-encoded, with nulls, empty
lists, an unknown page kind) raises :class:`NotPlain`, and the caller decodes it with
Arrow. Every run is checked against the page sizes and the row count, so a page this
module does not understand is never read as vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO

import numpy as np

__all__ = ["Extents", "NotPlain", "column_extents", "read_exactly"]

# Thrift enums of parquet.thrift
DATA_PAGE, DATA_PAGE_V2 = 0, 3
PLAIN, RLE = 0, 3
# PageHeader fields: type, uncompressed size, compressed size, v1 header, v2 header
TYPE, UNCOMPRESSED_SIZE, COMPRESSED_SIZE, V1_HEADER, V2_HEADER = 1, 2, 3, 5, 8
# a page header is ~30 bytes; one with large statistics is read again, longer
HEADER_READS = (256, 4096, 65536)


class NotPlain(Exception):
    """A column chunk that is not stored as plain, uncompressed, null-free values."""


def read_exactly(handle: BinaryIO, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the bytes of ``handle`` from ``offset`` (no intermediate copy)."""
    handle.seek(offset)
    done = 0
    while done < len(out):
        got = handle.readinto(out[done:])
        if not got:
            raise NotPlain(f"the file ends at byte {offset + done}, inside a page")
        done += got


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


class _Compact:
    """Just enough of the Thrift compact protocol to read a Parquet page header."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos]  # IndexError past the end: the caller reads more
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def integer(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)  # zigzag

    def struct(self, nested: tuple[int, ...] = ()) -> dict[int, object]:
        """Integer and bool fields by id; the structs ``nested`` names parsed, others skipped."""
        fields: dict[int, object] = {}
        field = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == 0:
                return fields
            field = field + (head >> 4) if head >> 4 else self.integer()
            if kind in (1, 2):
                fields[field] = kind == 1
            elif kind in (3, 4, 5, 6):
                fields[field] = self.byte() if kind == 3 else self.integer()
            elif kind == 12 and field in nested:
                fields[field] = self.struct()
            else:
                self.skip(kind)

    def skip(self, kind: int) -> None:
        """Step over one value; only collections and non-integer fields come here, and
        inside a collection a bool takes a byte."""
        if kind in (1, 2, 3):
            self.pos += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind in (7, 13):  # double, uuid
            self.pos += 8 if kind == 7 else 16
        elif kind == 8:
            size = self.varint()  # not `pos += varint()`: that adds to the old position
            self.pos += size
        elif kind in (9, 10):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(head & 0x0F)
        elif kind == 11:
            size = self.varint()
            types = self.byte() if size else 0
            for _ in range(size):
                self.skip(types >> 4)
                self.skip(types & 0x0F)
        elif kind == 12:
            self.struct()
        else:
            raise NotPlain(f"unknown Thrift type {kind} in a page header")


def _page_header(handle: BinaryIO, offset: int) -> tuple[dict[int, object], int]:
    """The page header at ``offset`` and its length in bytes."""
    for size in HEADER_READS:
        data = _read_at(handle, offset, size)
        reader = _Compact(data)
        try:
            header = reader.struct(nested=(V1_HEADER, V2_HEADER))
        except IndexError:
            if len(data) < size:
                raise NotPlain("the file ends inside a page header") from None
            continue
        return header, reader.pos
    raise NotPlain("a page header longer than 64 KiB")


def _values_start(
    handle: BinaryIO, header: dict, body: int, levels: tuple[int, int]
) -> tuple[int, int]:
    """Where the values of the page whose body starts at ``body`` begin, and how many
    entries (values, nulls and empty lists alike) the page holds."""
    if header.get(TYPE) == DATA_PAGE:
        page = header.get(V1_HEADER) or {}
        if page.get(2) != PLAIN:
            raise NotPlain("values not PLAIN-encoded")
        start = body
        max_repetition, max_definition = levels
        # v1: length-prefixed RLE repetition levels, then definition levels, then values
        for present, encoding in ((max_repetition, 4), (max_definition, 3)):
            if present:
                if page.get(encoding) != RLE:
                    raise NotPlain("levels not RLE-encoded")
                start += 4 + int.from_bytes(_read_at(handle, start, 4), "little")
        return start, int(page.get(1, -1))
    if header.get(TYPE) == DATA_PAGE_V2:
        page = header.get(V2_HEADER) or {}
        if page.get(4) != PLAIN or page.get(2, 0) != 0:
            raise NotPlain("values not PLAIN-encoded, or nulls")
        return body + int(page.get(5, 0)) + int(page.get(6, 0)), int(page.get(1, -1))
    raise NotPlain(f"a page of type {header.get(TYPE)} (dictionary or index)")


@dataclass(frozen=True)
class Extents:
    """Where a column chunk's values lie: page ``i`` holds ``counts[i]`` values of
    ``itemsize`` bytes from byte ``offsets[i]`` of the file."""

    offsets: np.ndarray
    counts: np.ndarray
    itemsize: int

    @cached_property
    def starts(self) -> np.ndarray:
        """Index of each page's first value; the last entry is the total."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    def read(self, handle: BinaryIO, first: int, stop: int, out: memoryview) -> None:
        """Copy values ``[first, stop)`` (value indexes, not rows) into the bytes ``out``."""
        starts = self.starts
        page = int(np.searchsorted(starts, first, side="right")) - 1
        at = 0
        while first < stop:
            end = min(stop, int(starts[page + 1]))
            size = (end - first) * self.itemsize
            offset = int(self.offsets[page]) + (first - int(starts[page])) * self.itemsize
            read_exactly(handle, offset, out[at : at + size])
            at, first, page = at + size, end, page + 1


def column_extents(
    handle: BinaryIO, chunk, levels: tuple[int, int], itemsize: int, values: int
) -> Extents:
    """The extents of one column chunk (``pyarrow.parquet.ColumnChunkMetaData``) holding
    ``values`` values, or :class:`NotPlain`. ``levels`` is the column's (max repetition,
    max definition) level."""
    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
        raise NotPlain(f"{chunk.compression} column chunk, or a dictionary")
    position = chunk.data_page_offset
    end = position + chunk.total_compressed_size
    offsets, counts = [], []
    while position < end:
        header, length = _page_header(handle, position)
        size = int(header.get(COMPRESSED_SIZE, -1))
        if size < 0 or size != header.get(UNCOMPRESSED_SIZE):
            raise NotPlain("a compressed page")
        body = position + length
        start, count = _values_start(handle, header, body, levels)
        if count < 0 or body + size - start != count * itemsize:
            raise NotPlain("a page holding nulls or empty lists")  # fewer bytes than entries
        offsets.append(start)
        counts.append(count)
        position = body + size
    if position != end or sum(counts) != values:
        raise NotPlain(f"pages hold {sum(counts)} values, the row group {values}")
    return Extents(np.asarray(offsets, np.int64), np.asarray(counts, np.int64), itemsize)
