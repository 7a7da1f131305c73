"""The "What the latents encode" section of ``embedkit report``: the probe table
(:func:`embedkit.probes.measure.probe`) of the report's dataset and its carried label
columns, with other datasets of the same images beside it (``compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from embedkit.errors import EmbedkitError
from embedkit.probes.align import carried_label_columns
from embedkit.probes.measure import probe
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.viz.html import Report

__all__ = ["SHOWN_COLUMNS", "probe_section"]

#: the table's columns the report shows (the split sizes go in the text above it)
SHOWN_COLUMNS = ["column", "measure", "dataset", "block", "dim", "baseline", "knn", "linear"]


def probe_section(
    report: Report,
    latents: str | Path | LatentDataset,
    compare: Sequence[str | Path | LatentDataset] = (),
    seed: int = 0,
) -> pd.DataFrame | None:
    """Add the section to ``report`` and return the table; nothing (None) when ``latents``
    carry no label column. A probe that cannot run (datasets sharing too few ids, too few
    labeled rows) leaves a one-line note."""
    ds = open_latents(latents)
    columns = carried_label_columns(ds)
    if not columns:
        return None
    report.heading("What the latents encode")
    try:
        table = probe([ds, *compare], columns, seed=seed)
    except EmbedkitError as error:
        report.text(f"Not computed: {error}")
        return None
    report.text(
        f"How well each label can be read back from the latents, on {_count(table['n_test'])} "
        f"held-out rows (trained on {_count(table['n_train'])}; the same rows for every "
        f"dataset): knn is the vote (or mean) of the {table.attrs['k']} nearest training "
        "latents, linear a cross-validated logistic (ridge) regression on the standardised "
        "latents, baseline the majority class (the training mean). Accuracy for classes, R² "
        "for numbers. A timm backbone embedded with layers= is scored per stage (block), "
        "shallow to deep."
    )
    report.table(table[SHOWN_COLUMNS])
    return table


def _count(values: pd.Series) -> str:
    """``"38"``, or ``"37-40"`` when the columns' splits differ (rounded per class)."""
    low, high = int(values.min()), int(values.max())
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"
