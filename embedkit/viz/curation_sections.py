"""Curation sections of ``embedkit report``: near-duplicates, outliers, label mistakes.

Each section runs one job of :mod:`embedkit.curation` on the dataset (all three share one
loaded index: a k-NN pass each), shows its top rows as thumbnail grids read from the
``source`` column (a missing or unreadable source draws a grey cell) and lists their ids
in a table. A job that cannot run on the dataset (too few rows, a label column that is
all null) leaves a one-line note instead of failing the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from embedkit.curation import (
    AutoThreshold,
    curation_index,
    label_issues,
    near_duplicates,
    outliers,
)
from embedkit.errors import EmbedkitError
from embedkit.index.loaded import LoadedIndex
from embedkit.store.dataset import LatentDataset
from embedkit.viz.grid import image_grid, load_thumbnail, save_png
from embedkit.viz.html import Report

__all__ = [
    "CELL",
    "curation_sections",
    "label_issues_section",
    "near_duplicates_section",
    "outliers_section",
    "source_thumbnails",
]

CELL = 56
MAX_GROUPS = 8
MAX_MEMBERS = 10  # a group's row shows its representative and up to this many members
MAX_OUTLIERS = 12
MAX_LABEL_ISSUES = 8


def source_thumbnails(
    ds: LatentDataset, ids: Sequence[Any], cell: int = CELL
) -> list[Image.Image | None]:
    """Thumbnails of the rows ``ids`` from their ``source`` column, in the order given;
    None (a grey cell) where the row, its source or the file is missing."""
    if not ids or "source" not in ds.schema.names:
        return [None] * len(ids)
    table = ds.filter(id=list(dict.fromkeys(ids))).to_pandas(["id", "source"], embedding=False)
    sources = {str(i): s for i, s in zip(table["id"], table["source"], strict=True)}
    return [_thumbnail(sources.get(str(i)), cell) for i in ids]


def _thumbnail(source: Any, cell: int) -> Image.Image | None:
    """One thumbnail, or None for a null source or an unreadable file."""
    if source is None or (isinstance(source, float) and pd.isna(source)):
        return None
    return load_thumbnail(str(source), cell)


def _chunks(items: list, size: int) -> list[list]:
    """``items`` in rows of ``size`` (the last may be shorter; none is empty)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _figure(report: Report, out: Path, name: str, caption: str, image: Image.Image) -> None:
    """Save ``image`` as ``out/name`` and inline it with a link to the PNG."""
    report.image(caption, image, save_png(image, out / name))


def near_duplicates_section(
    report: Report, ds: LatentDataset, out: Path, index: LoadedIndex | None = None
) -> pd.DataFrame | None:
    """The "Near-duplicates" section: up to ``MAX_GROUPS`` groups (``--auto`` threshold),
    a row each: the representative, then its members captioned with their distance to it."""
    report.heading("Near-duplicates")
    try:
        found = near_duplicates(ds, auto=True, index=index)
    except EmbedkitError as error:
        report.text(f"Not computed: {error}")
        return None
    report.text(_threshold_line(found))
    if found.empty:
        report.text("No near-duplicates found.")
        return found
    groups = found["group"].nunique()
    report.text(
        f"{groups:,} groups, {len(found):,} rows; the {min(groups, MAX_GROUPS)} largest are shown."
    )
    rows, captions, titles, listed = [], [], [], []
    for g, members in list(found.groupby("group", sort=True))[:MAX_GROUPS]:
        members = _representative_first(members).head(MAX_MEMBERS + 1)
        ids = members["id"].tolist()
        rows.append(ids)
        captions.append(["rep"] + [f"{d:.3g}" for d in members["distance"].iloc[1:]])
        titles.append(f"group {g} (n={int((found['group'] == g).sum())})")
        listed.append((g, members["representative"].iloc[0], ", ".join(map(str, ids[1:]))))
    images = _images_by_row(ds, rows)
    grid = image_grid(images, CELL, captions, row_titles=titles)
    caption = "each row: the representative, then its members (distance to it)"
    _figure(report, out, "near_duplicates.png", caption, grid)
    report.table(pd.DataFrame(listed, columns=["group", "representative", "members"]))
    return found


def _representative_first(members: pd.DataFrame) -> pd.DataFrame:
    """A group's rows: its representative, then the others nearest first (an exact copy
    is at distance 0 too, so the order is by being the representative first)."""
    others = members["id"].astype(str) != members["representative"].astype(str)
    order = members.assign(_other=others.to_numpy())
    return order.sort_values(["_other", "distance"], kind="stable").drop(columns="_other")


def _threshold_line(found: pd.DataFrame) -> str:
    """How the threshold was chosen (``attrs["auto"]``), or the threshold itself."""
    metric = found.attrs.get("metric", "cosine")
    chosen = found.attrs.get("auto")
    if chosen:
        return "Threshold " + AutoThreshold(**chosen).describe(metric)
    return f"Threshold {found.attrs.get('threshold')} ({metric})."


def _images_by_row(ds: LatentDataset, rows: list[list[Any]]) -> list[list[Image.Image | None]]:
    """Thumbnails for rows of ids, read with one filter of the dataset."""
    flat = source_thumbnails(ds, [i for row in rows for i in row])
    images, start = [], 0
    for row in rows:
        images.append(flat[start : start + len(row)])
        start += len(row)
    return images


def outliers_section(
    report: Report, ds: LatentDataset, out: Path, index: LoadedIndex | None = None
) -> pd.DataFrame | None:
    """The "Outliers" section: the ``MAX_OUTLIERS`` most unique rows, captioned with their score."""
    report.heading("Outliers")
    try:
        found = outliers(ds, top=MAX_OUTLIERS, index=index)
    except EmbedkitError as error:
        report.text(f"Not computed: {error}")
        return None
    k = found.attrs.get("k", 10)
    report.text(
        f"The {len(found)} rows farthest from their {k} nearest neighbours (uniqueness: "
        "1 the loneliest row, 0 the most crowded; z: robust standard deviations above "
        "the typical distance)."
    )
    ids = found["id"].tolist()
    images = source_thumbnails(ds, ids)
    labels = [f"{u:.2f} z{z:.1f}" for u, z in zip(found["uniqueness"], found["z"], strict=True)]
    grid = image_grid(_chunks(images, 6), 72, _chunks(labels, 6))
    _figure(report, out, "outliers.png", "the most unique rows: uniqueness, z", grid)
    report.table(found[["rank", "id", "uniqueness", "distance", "z"]])
    return found


def label_issues_section(
    report: Report,
    ds: LatentDataset,
    out: Path,
    column: str,
    index: LoadedIndex | None = None,
) -> pd.DataFrame | None:
    """The "Possible label mistakes" section: the ``MAX_LABEL_ISSUES`` rows whose neighbours most
    agree on another ``column`` value, and how far the ranking can be trusted."""
    report.heading("Possible label mistakes")
    try:
        found = label_issues(ds, column, index=index)
    except EmbedkitError as error:
        report.text(f"Not computed: {error}")
        return None
    agreement = found.attrs.get("agreement", 1.0)
    report.text(
        f"{agreement:.0%} of the rows' nearest neighbours mostly share their {column}: "
        + (
            "the latents separate the labels, so the suggestions below are worth a look."
            if agreement >= 0.8
            else "the latents separate the labels poorly, so treat the suggestions "
            "below with caution."
        )
    )
    issues = found[found["issue"]].head(MAX_LABEL_ISSUES)
    if issues.empty:
        report.text(f"No likely {column} mistakes found.")
        return found
    report.text(f"{int(found['issue'].sum()):,} rows' neighbours suggest another {column}.")
    captions = [
        f"{a} -> {b} ({c:.2f})"
        for a, b, c in zip(issues["label"], issues["suggested"], issues["confidence"], strict=True)
    ]
    images = source_thumbnails(ds, issues["id"].tolist(), 128)
    grid = image_grid(_chunks(images, 4), 128, _chunks(captions, 4))
    caption = f"label X -> suggested Y (confidence), by {column}"
    _figure(report, out, "label_issues.png", caption, grid)
    shown = issues[["id", "label", "suggested", "confidence", "agreement"]]
    report.table(shown.rename(columns={"label": column}))
    return found


def curation_sections(
    report: Report, ds: LatentDataset, out: Path, label: str | None = None
) -> dict:
    """Add the three curation sections (label mistakes only with a ``label`` column) to
    ``report``, sharing one index; returns their headline numbers."""
    try:
        index = curation_index(ds)
    except EmbedkitError:
        index = None  # each section then reports why it could not run
    stats: dict = {}
    found = near_duplicates_section(report, ds, out, index)
    if found is not None:
        stats["near_duplicate_groups"] = int(found["group"].nunique())
        stats["near_duplicate_rows"] = len(found)
    found = outliers_section(report, ds, out, index)
    if found is not None:
        stats["outliers"] = found["id"].tolist()
    if label is not None:
        found = label_issues_section(report, ds, out, label, index)
        if found is not None:
            stats["label_issues"] = int(found["issue"].sum())
            stats["label_agreement"] = float(found.attrs.get("agreement", 1.0))
    return stats
