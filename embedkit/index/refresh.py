"""Whether a saved index whose latents changed can be updated in place or must be rebuilt,
and why: pure decisions on ``index.json`` and the parts' stats (no vector is read).

An index is updated in place (new parts' rows added, gone or rewritten parts' rows
removed) unless it no longer fits its choice:

* ``auto`` chose it by measurement for N rows and the set now holds over ``GROWTH`` times
  more or fewer (another kind may now be faster), or chose it by its rules and the rules
  now choose another kind (or the set grew big enough for ``auto`` to measure);
* its IVF list count came from the 4·√N rule and the rule now gives another count;
* rows must leave an index faiss cannot remove rows from (HNSW);
* it was built with other settings than the ones asked for now, or by an embedkit that
  did not record its parts.

After an update recall is measured again, and a fall below the target that raising the
search parameters cannot mend also rebuilds it (see :mod:`embedkit.index.update`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.index.choose import choose_index, ivf_nlist
from embedkit.index.info import IndexInfo
from embedkit.index.ondisk import LISTS_SUFFIX
from embedkit.index.parts import PartChanges, part_changes
from embedkit.index.select import measures_auto
from embedkit.store.vectors import PartStat

__all__ = [
    "GROWTH",
    "RULE_NLIST_KINDS",
    "Refresh",
    "plan_refresh",
    "removes_rows",
    "stale_message",
]

#: auto's measured choice holds while the rows stay within this factor of those it was made for
GROWTH = 2.0
#: kinds whose IVF list count embedkit derives from the rows (a factory string's is the user's)
RULE_NLIST_KINDS = ("ivf", "ivfsq", "ivfpq")
_SETTINGS = ("metric", "requested_kind", "memory_budget", "k", "target_recall", "recall_sample")


@dataclass(frozen=True)
class Refresh:
    """``action``: ``"unchanged"``, ``"update"`` (in place) or ``"rebuild"``; ``reason``:
    why, in words; ``changes``: the parts changed (None: not compared)."""

    action: str
    reason: str
    changes: PartChanges | None = None


def removes_rows(info: IndexInfo) -> bool:
    """Whether faiss can remove rows from the kind ``info`` describes (HNSW cannot)."""
    return info.kind != "hnsw" and not re.search(r"(^|,)HNSW", info.factory)


def _outgrown(info: IndexInfo, n: int) -> str | None:
    """Why ``info``'s kind no longer fits ``n`` rows, or None."""
    if info.requested_kind == "auto" and info.selection:
        made_for = info.chosen_rows or info.ntotal
        if n > GROWTH * made_for or n * GROWTH < made_for:
            return (
                f"auto measured {info.factory} for {made_for:,} rows and the set now holds "
                f"{n:,}: another kind may be faster"
            )
    elif info.requested_kind == "auto":
        gpu = info.built_on == "gpu"
        if not gpu and measures_auto("auto", n, info.dim, gpu, info.recall_sample):
            return f"at {n:,} rows auto chooses by measurement"
        rule = choose_index(n, info.dim, info.memory_budget, gpu)
        if rule.factory != info.factory:
            return f"at {n:,} rows auto's rules choose {rule.factory}, not {info.factory}"
    nlist = re.match(r"^IVF(\d+)", info.factory)
    rule_nlist = info.requested_kind in (*RULE_NLIST_KINDS, "auto")
    if nlist and rule_nlist and ivf_nlist(n) != int(nlist.group(1)):
        return (
            f"IVF{nlist.group(1)} no longer follows the 4*sqrt(N) rule at {n:,} rows "
            f"(IVF{ivf_nlist(n)})"
        )
    return None


def plan_refresh(
    info: IndexInfo, stats: Sequence[PartStat], requested: dict[str, Any] | None = None
) -> Refresh:
    """Whether the index ``info`` describes is up to date with the parts ``stats``, can
    be updated in place, or must be rebuilt (with the settings ``requested``: ``None``
    values, or absent ones, mean "as the index was built")."""
    for name in _SETTINGS:
        wanted = (requested or {}).get(name)
        saved = getattr(info, name)
        if wanted is not None and wanted != saved:
            option = "kind" if name == "requested_kind" else name
            return Refresh("rebuild", f"{option}={wanted!r} asked for; the index has {saved!r}")
    if not info.parts:
        return Refresh("rebuild", "index.json records no parts (written by an older embedkit)")
    changes = part_changes(info.parts, stats)
    if changes.unchanged:
        return Refresh("unchanged", f"the index holds all {info.ntotal:,} rows", changes)
    n = info.ntotal - changes.removed_rows + changes.added_rows
    why = _outgrown(info, n)
    if why is None and any(name.endswith(LISTS_SUFFIX) for name in info.files):
        why = "its inverted lists are on disk, read-only (an on-disk index is rebuilt)"
    if why is None and changes.gone and not removes_rows(info):
        why = f"{info.factory} cannot remove rows (faiss HNSW graphs cannot lose nodes)"
    if why is not None:
        return Refresh("rebuild", f"{changes.describe()}; {why}", changes)
    return Refresh("update", f"{changes.describe()}; {info.factory} still fits {n:,} rows", changes)


def stale_message(info: IndexInfo, stats: Sequence[PartStat], folder: Path, latents: Path) -> str:
    """The one-line error for a stale index, naming the cheapest fix."""
    refresh = plan_refresh(info, stats)
    said = refresh.changes.describe() if refresh.changes is not None else "the latents changed"
    head = f"the index in {folder} is stale: {said} since it was built"
    if refresh.action == "update":
        return (
            f"{head}; update it in place with `embedkit index {latents}` (incremental), or "
            "search with --update / update=True"
        )
    reason = refresh.reason.split("; ", 1)[-1]
    return f"{head}; {reason}: rebuild it with `embedkit index {latents}` (or pass rebuild=True)"
