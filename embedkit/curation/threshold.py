"""``--auto``: a near-duplicate threshold read off the distribution of 1-NN distances.

Duplicates are rows whose nearest neighbour is far closer than a typical row's. On the
log of the 1-NN distances (``1 - cosine`` or squared L2) of every row, with ``m`` the
median and ``s`` a robust spread (1.4826 x the median absolute deviation: robust to up
to half the rows being copies), the threshold is ``exp(m - Z * s)``: Z = 3 robust
standard deviations below the typical 1-NN distance, in ratio terms. It is capped at
``m`` / ``MAX_FRACTION_OF_MEDIAN`` (a tenth of the median 1-NN distance): on
high-dimensional latents whose 1-NN distances are tightly bunched, ``s`` is small and
3 spreads below the median is still an ordinary neighbour, not a copy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from embedkit.errors import InputError

__all__ = ["MAX_FRACTION_OF_MEDIAN", "AutoThreshold", "Z", "auto_threshold"]

Z = 3.0
MAX_FRACTION_OF_MEDIAN = 10.0
#: exact copies have distance 0: logs are taken of distances at least this x the median
FLOOR = 1e-6


@dataclass(frozen=True)
class AutoThreshold:
    """The threshold ``--auto`` chose (a distance) and what it was read from."""

    distance: float  # the threshold, as a distance (lower is closer)
    median: float  # median 1-NN distance
    spread: float  # robust standard deviation of log 1-NN distances
    z: float  # Z
    capped: bool  # the cap at median / MAX_FRACTION_OF_MEDIAN decided
    rows_below: int  # rows whose 1-NN distance is at or below the threshold
    rows: int

    def describe(self, metric: str) -> str:
        """One line saying how the threshold was chosen."""
        rule = (
            f"a tenth of the median 1-NN distance {self.median:.4g} (cap)"
            if self.capped
            else f"median 1-NN distance {self.median:.4g} / exp({self.z:g} x robust "
            f"spread {self.spread:.3f} of log distances)"
        )
        unit = "1 - cosine" if metric == "cosine" else "squared L2"
        return (
            f"auto: {rule}: {self.distance:.4g} ({unit}); {self.rows_below:,} of "
            f"{self.rows:,} rows have a neighbour that close"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def auto_threshold(nearest: np.ndarray, z: float = Z) -> AutoThreshold:
    """The threshold (a distance) for ``nearest``, every row's 1-NN distance."""
    d = np.asarray(nearest, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 3:
        raise InputError(f"--auto needs at least 3 rows with a neighbour, got {len(d)}")
    median = float(np.median(d))
    if median <= 0:
        raise InputError(
            "--auto cannot choose: over half of the rows are exact copies of another row; "
            "pass --threshold"
        )
    logs = np.log(np.maximum(d, FLOOR * median))
    centre = math.log(median)
    spread = 1.4826 * float(np.median(np.abs(logs - centre)))
    robust = math.exp(centre - z * spread)
    cap = median / MAX_FRACTION_OF_MEDIAN
    distance = min(robust, cap)
    below = int((d <= distance).sum())
    return AutoThreshold(distance, median, spread, z, cap < robust, below, len(d))
