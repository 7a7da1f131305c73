"""Attribute vectors: centroid of the rows with a property minus centroid of those without,
scored on held-out rows (AUC, Cohen's d) of a split stratified by class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedkit.algebra.labels import JoinReport, labeled
from embedkit.errors import InputError
from embedkit.plugins.info import BackboneInfo
from embedkit.store.dataset import LatentDataset

__all__ = [
    "AttributeVector",
    "attribute_vector",
    "attribute_vectors",
    "auc",
    "cohens_d",
]


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability a positive scores above a negative (Mann-Whitney; ties count half)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    ranks = pd.Series(np.concatenate([positive, negative])).rank().to_numpy()
    rank_sum = ranks[: len(positive)].sum()
    return float(
        (rank_sum - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative))
    )


def cohens_d(positive: np.ndarray, negative: np.ndarray) -> float:
    """Standardized mean difference with a pooled standard deviation."""
    if len(positive) < 2 or len(negative) < 2:
        return float("nan")
    pooled = np.sqrt(
        ((len(positive) - 1) * positive.var(ddof=1) + (len(negative) - 1) * negative.var(ddof=1))
        / (len(positive) + len(negative) - 2)
    )
    return float((positive.mean() - negative.mean()) / max(pooled, 1e-12))


@dataclass(frozen=True)
class AttributeVector:
    """``centroid(positive) - centroid(negative)`` with how well it separates the classes.

    ``auc`` and ``cohens_d`` score the projection onto a vector fitted without the
    held-out rows, on those held-out rows, so they are honest estimates. ``in_sample``
    says they are not: a class had fewer than 2 rows (or ``holdout=0``), so nothing could
    be held out and they were scored on the rows the vector was fitted on (optimistic).
    """

    name: str
    vector: np.ndarray
    backbone: BackboneInfo
    column: str
    positive: str
    negative: str
    n_positive: int
    n_negative: int
    auc: float
    cohens_d: float
    in_sample: bool = False

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "column": self.column,
            "positive": self.positive,
            "negative": self.negative,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "norm": round(self.norm, 6),
            "auc": self.auc,
            "cohens_d": self.cohens_d,
            "in_sample": self.in_sample,
        }


def _coerce(values: pd.Series, wanted: Any) -> Any:
    """Match a value typed on the command line ("true", "3") to the column's dtype."""
    if not isinstance(wanted, str):
        return wanted
    # a bool column with missing values (or joined with unmatched ids) has object dtype
    if pd.api.types.is_bool_dtype(values) or pd.api.types.infer_dtype(values) == "boolean":
        return wanted.strip().lower() in ("true", "1", "yes")
    if pd.api.types.is_numeric_dtype(values):
        try:
            number = float(wanted)
        except ValueError:
            return wanted
        return int(number) if pd.api.types.is_integer_dtype(values) else number
    return wanted


def _as_mask(values: pd.Series, wanted: Any) -> np.ndarray:
    wanted = (
        [_coerce(values, w) for w in wanted]
        if isinstance(wanted, (list, tuple, set))
        else _coerce(values, wanted)
    )
    if isinstance(wanted, (list, tuple, set)):
        return values.isin(list(wanted)).to_numpy()
    return (values == wanted).to_numpy()


def _split(pos: np.ndarray, neg: np.ndarray, holdout: float, seed: int) -> np.ndarray | None:
    """Held-out rows, stratified: ``holdout`` of the positives and of the negatives (at
    least one of each, never all). None when nothing can be held out: ``holdout`` is 0 or
    a class has fewer than 2 rows.

    One permutation of all rows orders both classes, so swapping which side is positive
    holds out the same rows."""
    sizes = int(pos.sum()), int(neg.sum())
    if holdout <= 0 or min(sizes) < 2:
        return None
    order = np.random.default_rng(seed).permutation(len(pos))
    test = np.zeros(len(pos), dtype=bool)
    for members, size in zip((pos, neg), sizes, strict=True):
        take = min(max(round(size * holdout), 1), size - 1)
        test[order[members[order]][:take]] = True
    return test


def _fit(
    vectors: np.ndarray, pos: np.ndarray, neg: np.ndarray, holdout: float, seed: int
) -> tuple[np.ndarray, float, float, bool]:
    """The vector (fitted on every row), its held-out AUC and Cohen's d, and whether those
    had to be scored in-sample."""
    full = vectors[pos].mean(0) - vectors[neg].mean(0)
    test = _split(pos, neg, holdout, seed)
    if test is None:  # too few rows to hold any out: score in-sample, and say so
        v, scored_pos, scored_neg = full, pos, neg
    else:
        v = vectors[pos & ~test].mean(0) - vectors[neg & ~test].mean(0)
        scored_pos, scored_neg = pos & test, neg & test
    proj_pos, proj_neg = vectors[scored_pos] @ v, vectors[scored_neg] @ v
    score, d = auc(proj_pos, proj_neg), cohens_d(proj_pos, proj_neg)
    return full.astype(np.float32), score, d, test is None


def attribute_vector(
    latents: str | Path | LatentDataset,
    column: str,
    positive: Any = True,
    negative: Any = None,
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> AttributeVector:
    """The attribute vector for ``column``: mean of ``positive`` rows minus mean of the rest.

    Args:
        column: a label column carried in the latents or present in ``labels``.
        positive: the value (or list of values) that has the attribute; default ``True``.
        negative: the value(s) that lack it; default every other value.
        labels: a Parquet/CSV table or DataFrame joined on ``id_column`` (default: ``id``,
            or the labels column that matches the latent ids; see :func:`labeled`).
        holdout: fraction of the positives and of the negatives held out to score the
            vector (AUC, Cohen's d); ``in_sample`` is set when a class is too small.

    Example:
        >>> v = attribute_vector("latents/", "smiling")
        >>> v.auc, v.n_positive, v.norm
    """
    data = labeled(latents, [column], labels, id_column)
    return _attribute(
        data.vectors,
        data.labels[column],
        data.dataset.backbone,
        column,
        positive,
        negative,
        holdout,
        seed,
        name,
    )


def _attribute(
    vectors: np.ndarray,
    values: pd.Series,
    backbone: BackboneInfo,
    column: str,
    positive: Any,
    negative: Any,
    holdout: float,
    seed: int,
    name: str | None,
) -> AttributeVector:
    pos = _as_mask(values, positive)
    neg = ~pos if negative is None else _as_mask(values, negative) & ~pos
    if not pos.any() or not neg.any():
        raise InputError(
            f"column {column!r}: {int(pos.sum())} rows equal {positive!r} and "
            f"{int(neg.sum())} rows are negatives; both sides need rows "
            f"(values seen: {', '.join(map(str, values.unique()[:10]))})"
        )
    vector, score, d, in_sample = _fit(vectors, pos, neg, holdout, seed)
    negative_name = "rest" if negative is None else str(negative)
    default = column if positive is True and negative is None else f"{column}={positive}"
    return AttributeVector(
        name or default,
        vector,
        backbone,
        column,
        str(positive),
        negative_name,
        int(pos.sum()),
        int(neg.sum()),
        score,
        d,
        in_sample,
    )


def attribute_vectors(
    latents: str | Path | LatentDataset,
    columns: Sequence[str],
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str | None = None,
    holdout: float = 0.2,
    seed: int = 0,
) -> tuple[list[AttributeVector], JoinReport]:
    """Attribute vectors for many columns at once: a boolean column gives one vector
    (True vs False); any other column gives one per value (value vs the rest)."""
    data = labeled(latents, list(columns), labels, id_column, dropna=False)
    found = []
    for column in columns:
        values = data.labels[column]
        present = values.notna().to_numpy()
        vectors, values = data.vectors[present], values[present].reset_index(drop=True)
        backbone = data.dataset.backbone
        if pd.api.types.is_bool_dtype(values) or set(values.unique()) <= {True, False}:
            found.append(
                _attribute(
                    vectors, values.astype(bool), backbone, column, True, None, holdout, seed, None
                )
            )
            continue
        for value in sorted(values.unique(), key=str):
            found.append(
                _attribute(vectors, values, backbone, column, value, None, holdout, seed, None)
            )
    return found, data.report
