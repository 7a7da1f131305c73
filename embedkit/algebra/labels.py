"""Joining latents with labels: carried columns or a separate table keyed by id."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.errors import InputError
from embedkit.store.dataset import LatentDataset, open_latents

__all__ = ["JoinReport", "LabeledLatents", "labeled"]


@dataclass(frozen=True)
class JoinReport:
    """How latents and a labels table matched up (nothing is dropped silently)."""

    latents: int
    labeled: int
    latents_without_label: int
    labels_without_latent: int

    def __str__(self) -> str:
        return (
            f"{self.labeled} of {self.latents} latents labeled; "
            f"{self.latents_without_label} latents had no label row, "
            f"{self.labels_without_latent} label rows had no latent"
        )


@dataclass(frozen=True)
class LabeledLatents:
    """Vectors with their ids and label columns, aligned row by row."""

    dataset: LatentDataset
    ids: np.ndarray
    vectors: np.ndarray
    labels: pd.DataFrame
    report: JoinReport


def _read_labels(labels: str | Path | pd.DataFrame, id_column: str) -> pd.DataFrame:
    if isinstance(labels, pd.DataFrame):
        return labels
    path = Path(labels)
    if not path.is_file():
        raise InputError(f"labels table {path} does not exist")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype={id_column: str})  # keep ids like "007" intact
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise InputError(f"cannot read labels table {path}: {type(exc).__name__}: {exc}") from exc


def labeled(
    latents: str | Path | LatentDataset,
    columns: list[str],
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str = "id",
    dropna: bool = True,
) -> LabeledLatents:
    """Vectors plus the label ``columns``, from the latents or joined from ``labels`` on id.

    Rows whose label is missing are left out and counted in the report (and a warning).
    """
    ds = open_latents(latents)
    ids = ds.ids()
    vectors = ds.to_numpy().astype(np.float32, copy=False)
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
        table = _read_labels(labels, id_column)
        for column in [id_column, *columns]:
            if column not in table.columns:
                raise InputError(
                    f"labels table has no column {column!r}; columns are "
                    f"{', '.join(map(str, table.columns))}"
                )
        table = table[[id_column, *[c for c in columns if c != id_column]]].copy()
        table[id_column] = table[id_column].astype(str)
        if table[id_column].duplicated().any():
            dup = table[id_column][table[id_column].duplicated()].iloc[0]
            raise InputError(f"labels table repeats id {dup!r}; ids must be unique")
        frame = pd.DataFrame({id_column: ids}).merge(table, on=id_column, how="left")
        extra_labels = int((~table[id_column].isin(set(ids.tolist()))).sum())
    present = frame[columns].notna()
    # dropna=False keeps every row (callers drop per column) but still counts the unlabeled
    has_label = (present.all(axis=1) if dropna else present.any(axis=1)).to_numpy()
    keep = has_label if dropna else np.ones(len(ids), bool)
    report = JoinReport(len(ids), int(has_label.sum()), int((~has_label).sum()), extra_labels)
    if report.latents_without_label or report.labels_without_latent:
        warnings.warn(str(report), stacklevel=2)
    if not has_label.any():
        raise InputError(f"no latent in {ds.path} has a label in {', '.join(columns)}")
    return LabeledLatents(
        ds, ids[keep], vectors[keep], frame.loc[keep, columns].reset_index(drop=True), report
    )
