"""Benchmark curation at scale: near-duplicates (--auto) and outliers on synthetic latents
with planted copies and planted outliers, against an exact all-pairs baseline.

Usage::

    .venv/bin/python benchmarks/curation.py                   # 1M x 128 (minutes on 2 cores)
    .venv/bin/python benchmarks/curation.py --rows 100000     # a quick check

Data: ``--clusters`` gaussian clusters (centres ~ N(0, 1), spread 0.5 per dimension), as
in benchmarks/search.py, cosine metric. ``--copies`` of the rows (default 1 %) are
replaced by copies of other rows: a third exact, a third with noise 0.02 and a third
with noise 0.05 per dimension (a tenth of the clusters' spread); ``--outliers`` rows are
replaced by points far from every cluster (a centre ~ N(0, 1) plus noise 2.0).

Timed, each on its own: the index build (``--kind``, default auto, saved), then
``near_duplicates(auto=True)`` and ``uniqueness`` (outliers), each streaming every row
through the index; precision and recall of the planted copies and outliers. The exact
baseline: all pairs of the first ``--baseline-rows`` rows (a blocked X @ X.T, every
pair within the same threshold), timed and compared with ``near_duplicates`` on the same
rows; its time is extrapolated to all rows (x (rows / baseline rows)^2). Resident memory
is recorded before and after the jobs (the generated array is let go once written, and
the index built is dropped: each job loads the saved one). Writes
``results/curation.json``.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import save_results  # noqa: E402

from embedkit.curation import near_duplicates, outliers  # noqa: E402
from embedkit.index.build import build_index  # noqa: E402
from embedkit.index.metric import prepare_vectors  # noqa: E402
from embedkit.plugins.info import BackboneInfo  # noqa: E402
from embedkit.store.dataset import open_latents  # noqa: E402
from embedkit.store.writer import write_latents  # noqa: E402

NOISE = (0.0, 0.02, 0.05)  # per dimension, for each third of the copies


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory now (Linux), to tell what a step holds from the process's peak."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def synthetic(args: argparse.Namespace) -> tuple[np.ndarray, dict[int, int], np.ndarray]:
    """Vectors, copy row -> original row, and the outlier rows."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    x = np.empty((args.rows, args.dim), np.float32)
    for lo in range(0, args.rows, 100_000):  # in chunks: no float64 copy of 1M x 128
        hi = min(args.rows, lo + 100_000)
        noise = rng.standard_normal(size=(hi - lo, args.dim), dtype=np.float32)
        x[lo:hi] = centres[rng.integers(0, args.clusters, hi - lo)] + 0.5 * noise
    n_copies = int(args.rows * args.copies)
    rows = rng.permutation(args.rows)
    copies, originals = rows[:n_copies], rows[n_copies : 2 * n_copies]
    odd = rows[2 * n_copies : 2 * n_copies + args.outliers]
    for part, sigma in zip(np.array_split(np.arange(n_copies), 3), NOISE, strict=True):
        shake = rng.standard_normal(size=(len(part), args.dim), dtype=np.float32)
        x[copies[part]] = x[originals[part]] + sigma * shake
    far = rng.normal(size=(args.outliers, args.dim)).astype(np.float32)
    x[odd] = far + 2.0 * rng.standard_normal(size=far.shape, dtype=np.float32)
    return x, dict(zip(copies.tolist(), originals.tolist(), strict=True)), odd


def pairs(groups) -> set[tuple[int, int]]:
    found = set()
    for _, members in groups.groupby("group"):
        rows = sorted(int(i[1:]) for i in members["id"])
        found |= set(itertools.combinations(rows, 2))
    return found


def exact_pairs(x: np.ndarray, distance: float, block: int = 4096) -> set[tuple[int, int]]:
    """Every pair of rows within ``distance`` (1 - cosine), by blocks of X @ X.T."""
    unit = prepare_vectors(x, "cosine", "vectors")
    found = set()
    for lo in range(0, len(unit), block):
        sims = unit[lo : lo + block] @ unit.T
        a, b = np.nonzero(1.0 - sims <= distance)
        a += lo
        keep = a < b
        found |= set(zip(a[keep].tolist(), b[keep].tolist(), strict=True))
    return found


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(args: argparse.Namespace, tmp: Path) -> dict:
    x, copy_of, odd = synthetic(args)
    ids = [f"v{i}" for i in range(args.rows)]
    write_latents(tmp / "lat", ids, x, BackboneInfo("bench", dim=args.dim))
    first = x[: args.baseline_rows].copy()  # the baseline's rows; the rest is let go
    del x, ids
    ds = open_latents(tmp / "lat")
    out: dict = {"rows": args.rows, "dim": args.dim, "clusters": args.clusters}
    out["copies"], out["outliers_planted"] = len(copy_of), len(odd)
    built, out["index_seconds"] = timed(lambda: build_index(ds, kind=args.kind, progress=False))
    out["index"] = f"{built.info.kind} ({built.info.factory}) params {built.info.params}"
    del built  # each job loads the saved index, as a new process would
    out["memory_mb"] = {"before_jobs": rss_mb()}
    groups, out["duplicates_seconds"] = timed(lambda: near_duplicates(ds, auto=True))
    out["memory_mb"]["after_duplicates"] = rss_mb()
    truth = {tuple(sorted(p)) for p in copy_of.items()}
    found = pairs(groups)
    hit = len(found & truth)
    out["duplicates"] = {
        "threshold": groups.attrs["threshold"],
        "auto": groups.attrs["auto"],
        "search": groups.attrs["search"],
        "pairs_found": len(found),
        "precision": hit / max(len(found), 1),
        "recall": hit / max(len(truth), 1),
    }
    top, out["outliers_seconds"] = timed(lambda: outliers(ds, top=len(odd)))
    out["memory_mb"]["after_outliers"] = rss_mb()
    out["memory_mb"]["peak"] = peak_mb()
    caught = len({f"v{i}" for i in odd} & set(top["id"]))
    out["outliers"] = {"top": len(odd), "planted_in_top": caught}
    out["baseline"] = baseline(args, first, groups.attrs["distance_threshold"], tmp)
    return out


def baseline(args: argparse.Namespace, x: np.ndarray, distance: float, tmp: Path) -> dict:
    """Exact all pairs on the first rows vs near_duplicates on the same rows."""
    n = len(x)
    exact, seconds = timed(lambda: exact_pairs(x, distance))
    write_latents(tmp / "base", [f"v{i}" for i in range(n)], x, BackboneInfo("b", args.dim))
    threshold = 1.0 - distance
    groups, ours = timed(lambda: near_duplicates(tmp / "base", threshold=threshold))
    found = pairs(groups)
    return {
        "rows": n,
        "all_pairs_seconds": seconds,
        "all_pairs_seconds_extrapolated_to_all_rows": seconds * (args.rows / n) ** 2,
        "near_duplicates_seconds": ours,
        "near_duplicates_index": groups.attrs["index"],
        "exact_pairs": len(exact),
        "same_pairs": found == exact,
        "recall_vs_exact": len(found & exact) / max(len(exact), 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--copies", type=float, default=0.01, help="fraction of rows")
    parser.add_argument("--outliers", type=int, default=100)
    parser.add_argument("--kind", default="auto", help="index kind (see docs/search.md)")
    parser.add_argument("--baseline-rows", type=int, default=50_000)
    parser.add_argument("--out", default="curation")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    path = save_results(args.out, result)
    for key, value in result.items():
        print(f"{key:42} {value}")
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
