"""What is saved beside the latents: the index folder's layout and ``index.json``.

An index lives in the dataset folder::

    latents/index/
      index.faiss    the faiss index (always saved as a CPU index)
      ids.parquet    faiss row -> latent id, in the order rows were added
      index.json     metric, kind, factory, search params, recall@k, fingerprint, files, ...

``index.json`` records the fingerprint of the latents it was built from, so an index
whose latents changed is detected and never served, and the size and sha256 of
``index.faiss`` and ``ids.parquet``, so a truncated or replaced file is never read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedkit.store.dataset import LatentDataset

__all__ = [
    "FORMAT_VERSION",
    "IDS_FILE",
    "INDEX_DIR",
    "INDEX_FILE",
    "INFO_FILE",
    "IndexInfo",
    "index_dir",
    "view_fingerprint",
]

INDEX_DIR = "index"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
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


def index_dir(latents: str | Path | LatentDataset) -> Path:
    """The folder an index of ``latents`` is saved in: ``<latents>/index``."""
    path = latents.path if isinstance(latents, LatentDataset) else Path(latents)
    return path / INDEX_DIR


def view_fingerprint(ds: LatentDataset) -> str:
    """The dataset's fingerprint, plus its filter for a filtered view: what an index (or a
    cached exact index) of exactly these rows records."""
    fp = ds.fingerprint()
    return fp if ds.expression is None else f"{fp}:filtered:{ds.expression}"
