"""What is saved beside the latents: the index folder's layout and ``index.json``.

An index lives in the dataset folder::

    latents/index/
      index.faiss    the faiss index (always saved as a CPU index)
      ids.parquet    faiss row -> latent id and part, in the order rows were added
      recall.npz     the recall queries and their exact neighbours (kept up to date)
      lists-<token>.ivfdata   an on-disk index's inverted lists (memory-mapped; only when
                     built with on_disk=True, see embedkit.index.ondisk)
      index.json     metric, kind, factory, search params, recall@k, fingerprint, parts,
                     files, ...

An incremental update writes ``index-<token>.faiss``, ``ids-<token>.parquet`` and
``recall-<token>.npz`` beside the old files and then replaces ``index.json``, which names
them: the index and its id map change together or not at all.

``index.json`` records the fingerprint of the latents it was built from and the parts it
holds, so an index whose latents changed is detected and never served (and can be brought
up to date, see :mod:`embedkit.index.update`), and the size and sha256 of each file, so a
truncated or replaced file is never read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedkit.location import RemotePath, locate
from embedkit.store.dataset import LatentDataset
from embedkit.store.vectors import PartStat, fingerprint_of

__all__ = [
    "FORMAT_VERSION",
    "IDS_FILE",
    "INDEX_DIR",
    "INDEX_FILE",
    "INFO_FILE",
    "RECALL_FILE",
    "IndexInfo",
    "index_dir",
    "view_fingerprint",
]

INDEX_DIR = "index"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
RECALL_FILE = "recall.npz"
FORMAT_VERSION = 1


def _faiss_version() -> str:
    import faiss  # only when an IndexInfo is made without one: reading index.json stays light

    return faiss.__version__


@dataclass
class IndexInfo:
    """What ``index.json`` holds: how an index was built and how well it does."""

    metric: str
    kind: str
    requested_kind: str
    factory: str
    reason: str
    params: dict[str, float]
    ntotal: int
    dim: int
    recall: float | None
    k: int
    recall_queries: int
    target_recall: float
    build_seconds: float
    fingerprint: str
    backbone: dict[str, Any]
    memory_budget: int | None = None
    recall_sample: int = 1000
    estimated_bytes: int | None = None
    built_on: str = "cpu"
    embedkit_version: str = ""
    faiss_version: str = field(default_factory=_faiss_version)
    created: str = ""
    format: int = FORMAT_VERSION
    # file name -> {"size": bytes, "sha256": hex}; empty in an index.json written before
    # files were checked, which must be rebuilt
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the recall promise: lower confidence bound of recall@k on the tuning queries, and
    # recall@k re-measured after the held-out rows were added (raised again if it dropped)
    recall_lower: float | None = None
    recall_after_add: float | None = None
    retuned_after_add: bool = False
    # auto by measurement: sample sizes, seconds, and per candidate kind, factory, params,
    # recall, recall_lower, q/s on the sample and predicted; empty when rules chose
    selection: dict[str, Any] = field(default_factory=dict)
    # the parts the index holds, as they were when their rows went in (name, size, rows,
    # mtime_ns, inode); empty in an index.json written before parts were recorded
    parts: list[dict[str, Any]] = field(default_factory=list)
    # the rows the kind was chosen for (an update rebuilds when the set outgrows them)
    chosen_rows: int | None = None
    # search parameters reaching the target for recall@(10·k): what a filter keeping 10 %
    # of the rows needs (see embedkit.index.filtered); empty: not measured
    filter_params: dict[str, float] = field(default_factory=dict)
    # the last incremental update: action, reason, rows added and removed, recall, seconds
    update: dict[str, Any] = field(default_factory=dict)
    # a sharded build (engine "ray"): shards, rows and seconds of each, the nodes they ran
    # on, the merge's seconds; empty for a build on one machine
    sharding: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexInfo:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        recall = "exact" if self.kind == "flat" else _recall_text(self.recall)
        params = ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items()) or "-"
        return (
            f"{self.kind} ({self.factory}, {self.metric}) ntotal={self.ntotal:,} dim={self.dim} "
            f"recall@{self.k}={recall} params={params} built in {self.build_seconds:.1f}s "
            f"on {self.built_on}"
        )


def _recall_text(recall: float | None) -> str:
    return "not measured" if recall is None else f"{recall:.3f}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def index_dir(latents: str | Path | RemotePath | LatentDataset) -> Path | RemotePath:
    """The folder an index of ``latents`` is saved in: ``<latents>/index`` (a URI too)."""
    path = latents.path if isinstance(latents, LatentDataset) else locate(latents)
    return path / INDEX_DIR


def view_fingerprint(ds: LatentDataset, stats: list[PartStat] | None = None) -> str:
    """The dataset's fingerprint (from its parts' ``stats`` when taken already), plus its
    filter for a filtered view: what an index (or a cached exact index) of exactly these
    rows records."""
    fp = ds.fingerprint() if stats is None else fingerprint_of(stats)
    return fp if ds.expression is None else f"{fp}:filtered:{ds.expression}"
