"""Which parts of the latents an index holds, and what changed since it was built.

``index.json`` records each part the index holds as it was when its rows went in (name,
byte size, rows, modification time, inode: what the dataset's fingerprint digests), and
``ids.parquet`` the part of each faiss row. Comparing the record with the parts on disk
says which parts are new (their rows can be added), and which are gone or were rewritten
(their rows must leave the index: a rewritten part is taken out whole and added again,
since nothing says which of its rows changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedkit.store.vectors import PartStat

__all__ = ["PartChanges", "part_changes", "part_of_positions", "part_records"]


def part_records(stats: Sequence[PartStat]) -> list[dict[str, Any]]:
    """What ``index.json`` keeps of each part (JSON-ready)."""
    return [
        {"name": s.path.name, "size": s.size, "rows": s.rows, "mtime_ns": s.mtime_ns,
         "inode": s.inode}
        for s in stats
    ]  # fmt: skip


def _same(record: dict[str, Any], stat: PartStat) -> bool:
    return (record["size"], record["rows"], record["mtime_ns"], record["inode"]) == (
        stat.size, stat.rows, stat.mtime_ns, stat.inode,
    )  # fmt: skip


def part_of_positions(rows_per_part: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """The part (its number in ``rows_per_part``) of each row position of a whole-dataset
    stream, which reads the parts in name order."""
    ends = np.cumsum(np.asarray(rows_per_part, dtype=np.int64))
    return np.searchsorted(ends, positions, side="right").astype(np.int32)


@dataclass
class PartChanges:
    """The recorded parts against the parts on disk.

    ``kept``: numbers (in the record) of the parts still there unchanged; ``gone``: of
    the parts removed or rewritten, whose rows leave the index; ``new``: the parts on disk
    the index does not hold (added, or the new version of a rewritten one);
    ``rewritten``: names both gone and new."""

    kept: list[int]
    gone: list[int]
    new: list[PartStat]
    rewritten: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return not self.gone and not self.new

    @property
    def added_rows(self) -> int:
        return sum(s.rows for s in self.new)

    @property
    def removed_rows(self) -> int:
        return sum(self.records[i]["rows"] for i in self.gone)

    def describe(self) -> str:
        """e.g. ``2 parts added (10,000 rows), 1 part rewritten``."""
        rewritten = len(self.rewritten)
        added, removed = len(self.new) - rewritten, len(self.gone) - rewritten
        said = []
        if added:
            rows = sum(s.rows for s in self.new if s.path.name not in self.rewritten)
            said.append(f"{_parts(added)} added ({rows:,} rows)")
        if rewritten:
            before = sum(self.records[i]["rows"] for i in self.gone
                         if self.records[i]["name"] in self.rewritten)  # fmt: skip
            after = sum(s.rows for s in self.new if s.path.name in self.rewritten)
            said.append(f"{_parts(rewritten)} rewritten ({before:,} rows, now {after:,})")
        if removed:
            rows = sum(self.records[i]["rows"] for i in self.gone
                       if self.records[i]["name"] not in self.rewritten)  # fmt: skip
            said.append(f"{_parts(removed)} removed ({rows:,} rows)")
        return ", ".join(said) or "no part changed"


def _parts(n: int) -> str:
    return f"{n} part" if n == 1 else f"{n} parts"


def part_changes(records: Sequence[dict[str, Any]], stats: Sequence[PartStat]) -> PartChanges:
    """Compare the parts an index holds (``records``) with the parts on disk (``stats``)."""
    on_disk = {s.path.name: s for s in stats}
    kept, gone = [], []
    for number, record in enumerate(records):
        stat = on_disk.get(record["name"])
        (kept if stat is not None and _same(record, stat) else gone).append(number)
    held = {records[i]["name"] for i in kept}
    new = [s for s in stats if s.path.name not in held]
    rewritten = sorted({records[i]["name"] for i in gone} & {s.path.name for s in new})
    return PartChanges(kept, gone, new, rewritten, list(records))
