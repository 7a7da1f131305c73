"""Joining latents with labels: carried columns, or a separate table keyed by id — or, when
its ``id`` column matches nothing, by the labels column that matches the latent ids (or
their ``source`` paths), found and reported."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["JoinReport", "LabeledLatents", "labeled"]

DEFAULT_ID = "id"
_KEY = "__embedkit_join_key__"


@dataclass(frozen=True)
class JoinReport:
    """How latents and a labels table matched up (nothing is dropped silently).

    ``on`` is the labels column joined on; ``detected`` says how it was found when it is
    not the column asked for, or is matched through the latents' ``source`` paths.
    Equality compares the counts.
    """

    latents: int
    labeled: int
    latents_without_label: int
    labels_without_latent: int
    on: str = field(default=DEFAULT_ID, compare=False)
    detected: str = field(default="", compare=False)

    def __str__(self) -> str:
        counts = (
            f"{self.labeled} of {self.latents} latents labeled; "
            f"{self.latents_without_label} latents had no label row, "
            f"{self.labels_without_latent} label rows had no latent"
        )
        return f"{self.detected}; {counts}" if self.detected else counts


@dataclass(frozen=True)
class LabeledLatents:
    """Vectors with their ids and label columns, aligned row by row."""

    dataset: LatentDataset
    ids: np.ndarray
    vectors: np.ndarray
    labels: pd.DataFrame
    report: JoinReport


@dataclass(frozen=True)
class _Key:
    """One way to join: a labels column compared with the latent ids, or (``via_source``)
    resolved as paths against the labels table's folder and compared with ``source``."""

    column: str
    via_source: bool
    values: pd.Series  # per labels row, the value compared (None: matches nothing)
    latent_values: np.ndarray  # per latent, what it is compared with
    matched: int  # latents it matches

    @property
    def name(self) -> str:
        how = " as paths under the labels table's folder, against the latents' source"
        return f"labels column {self.column!r}{how if self.via_source else ''}"


def _read_labels(labels: str | Path | pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    if isinstance(labels, pd.DataFrame):
        return labels
    path = Path(labels)
    if not path.is_file():
        raise InputError(f"labels table {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":  # keys like "007" stay intact: text unless a label
            header = pd.read_csv(path, nrows=0).columns
            return pd.read_csv(path, dtype={c: str for c in header if c not in columns})
        return pd.read_parquet(path)
    except Exception as exc:
        raise InputError(f"cannot read labels table {path}: {type(exc).__name__}: {exc}") from exc


def _key(column: str, values: pd.Series, latent_values: np.ndarray, via_source: bool) -> _Key:
    present = values.dropna()
    matched = int(pd.Series(latent_values, dtype=object).isin(present.to_numpy()).sum())
    return _Key(column, via_source, values, latent_values, matched)


def _as_text(values: pd.Series) -> pd.Series:
    return values.astype(str).where(values.notna(), None)


def _sources(ds: LatentDataset) -> np.ndarray | None:
    if "source" not in ds.columns:
        return None
    found = ds.to_table(["source"]).column("source").to_pylist()
    return np.array([os.path.normpath(s) if s else None for s in found], dtype=object)


def _alternatives(
    ds: LatentDataset, ids: np.ndarray, table: pd.DataFrame, columns: list[str], folder: Path
) -> list[_Key]:
    """Every other way the table could join the latents with unique keys, best first
    (matching the ids directly before matching the sources)."""
    sources = _sources(ds)
    found = []
    for column in table.columns:
        if column in columns:
            continue  # a label is not a key
        values = table[column]
        found.append(_key(column, _as_text(values), ids, False))
        if sources is not None and pd.api.types.infer_dtype(values, skipna=True) == "string":
            resolved = values.map(
                lambda v: os.path.normpath(os.path.join(folder, v)) if v else None,
                na_action="ignore",
            )
            found.append(_key(column, resolved, sources, True))
    unique = [k for k in found if k.matched and k.values.dropna().is_unique]
    return sorted(unique, key=lambda k: -k.matched)


def _far_more(better: int, matched: int, n: int) -> bool:
    """Another key wins when the asked one matches nothing, or under a fifth of the
    latents while the other matches at least half (and more)."""
    return better > matched and (matched == 0 or (5 * matched < n and 2 * better >= n))


def _hint(option: _Key | None, n: int) -> str:
    if option is None:
        return ""
    return (
        f"; {option.name} matches {option.matched} of {n}: pass --id-column {option.column} "
        f"(id_column={option.column!r})"
    )


def _join_key(
    ds: LatentDataset,
    ids: np.ndarray,
    table: pd.DataFrame,
    columns: list[str],
    id_column: str | None,
    folder: Path,
) -> tuple[_Key, str]:
    """The key to join on, and how it was found when it is not the column asked for."""
    asked_name, n = id_column or DEFAULT_ID, len(ids)
    asked = None
    if asked_name in table.columns:
        asked = _key(asked_name, _as_text(table[asked_name]), ids, False)
        if 5 * asked.matched >= n:  # matches a fair share: keep it
            return asked, ""
    options = _alternatives(ds, ids, table, columns, folder)
    if asked is None:
        raise InputError(
            f"labels table has no column {asked_name!r}; columns are "
            f"{', '.join(map(str, table.columns))}{_hint(options[0] if options else None, n)}"
        )
    if id_column is None:
        best = options[0] if options else None
    else:  # given: only that column, perhaps matched through the sources
        best = next((o for o in options if o.column == asked_name), None)
    if best is not None and _far_more(best.matched, asked.matched, n):
        as_ids = "as ids, " if best.column == asked_name else ""
        tail = "none" if asked.matched == 0 else f"{asked.matched} of {n}"
        note = f"joined on {best.name} ({best.matched} of {n} latents)"
        return best, f"{note}; {as_ids}{asked_name!r} matched {tail}"
    if asked.matched == 0 and options:  # given explicitly, and another column would match
        raise InputError(
            f"labels column {asked_name!r} matches none of the {n} latent ids (they look "
            f"like {ids[0]!r}; it holds values like {str(table[asked_name].iloc[0])!r})"
            f"{_hint(options[0], n)}"
        )
    return asked, ""


def _join(
    ds: LatentDataset,
    ids: np.ndarray,
    columns: list[str],
    labels: str | Path | pd.DataFrame,
    id_column: str | None,
) -> tuple[pd.DataFrame, int, _Key, str]:
    """The label columns per latent (NaN where none), the label rows without a latent,
    the key joined on and how it was found."""
    table = _read_labels(labels, columns)
    folder = Path.cwd() if isinstance(labels, pd.DataFrame) else Path(labels).resolve().parent
    key, note = _join_key(ds, ids, table, columns, id_column, folder)
    for column in columns:
        if column not in table.columns:
            raise InputError(
                f"labels table has no column {column!r}; columns are "
                f"{', '.join(map(str, table.columns))}"
            )
    keys = key.values.dropna()
    if keys.duplicated().any():
        dup = keys[keys.duplicated()].iloc[0]
        raise InputError(
            f"labels table repeats id {dup!r} (column {key.column!r}); ids must be unique"
        )
    part = table.loc[keys.index, list(dict.fromkeys(columns))].assign(**{_KEY: keys})
    frame = pd.DataFrame({_KEY: key.latent_values}).merge(part, on=_KEY, how="left")
    known = pd.Series(key.latent_values, dtype=object).dropna().to_numpy()
    extra = int((~key.values.isin(known)).sum())
    return frame, extra, key, note


def labeled(
    latents: str | Path | LatentDataset,
    columns: list[str],
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str | None = None,
    dropna: bool = True,
) -> LabeledLatents:
    """Vectors plus the label ``columns``, from the latents or joined from ``labels`` on id.

    ``id_column`` (default ``id``) names the labels column holding the latent ids. When it
    is not given and ``id`` matches none of them (or under a fifth while another column
    matches at least half), the table is joined on the column that matches — directly, or
    as paths under the table's folder against the latents' ``source`` — and the report says
    so. A given column that matches nothing is an error naming the one that would.
    Rows whose label is missing are left out and counted in the report (and a warning).
    """
    ds = open_latents(latents)
    ids = ds.ids()
    vectors = ds.to_numpy()  # may be a read-only Arrow view; the rows kept below are copies
    on, note, example = DEFAULT_ID, "", ""
    if labels is None:
        missing = [c for c in columns if c not in ds.columns]
        if missing:
            raise InputError(
                f"latents {ds.path} have no column {missing[0]!r} (columns: "
                f"{', '.join(ds.columns)}); pass labels=TABLE to join one by id"
            )
        frame = ds.to_table(columns).to_pandas()
        extra_labels = 0
    else:
        frame, extra_labels, key, note = _join(ds, ids, columns, labels, id_column)
        on = key.column
        values = key.values.dropna()
        example = (
            f" (latent ids look like {ids[0]!r}; labels column {on!r} holds values like "
            f"{values.iloc[0] if len(values) else None!r})"
        )
    present = frame[columns].notna()
    # dropna=False keeps every row (callers drop per column) but still counts the unlabeled
    has_label = (present.all(axis=1) if dropna else present.any(axis=1)).to_numpy()
    keep = has_label if dropna else np.ones(len(ids), bool)
    report = JoinReport(
        len(ids), int(has_label.sum()), int((~has_label).sum()), extra_labels, on, note
    )
    if report.latents_without_label or report.labels_without_latent or report.detected:
        warnings.warn(str(report), stacklevel=2)
    if not has_label.any():
        raise InputError(f"no latent in {ds.path} has a label in {', '.join(columns)}{example}")
    return LabeledLatents(
        ds,
        ids[keep],
        vectors[keep].astype(np.float32, copy=False),
        frame.loc[keep, columns].reset_index(drop=True),
        report,
    )
