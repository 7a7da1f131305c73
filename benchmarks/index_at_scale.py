"""Measure, on one core, what an index build of 10^8 vectors costs per vector, at the
sizes it would use: the figures docs/scale.md scales to a cluster.

Usage::

    .venv/bin/python benchmarks/index_at_scale.py             # D=512, nlist=65536, ~2 min
    .venv/bin/python benchmarks/index_at_scale.py --dim 768

For ``--dim`` (CLIP ViT-B/32: 512) and ``nlist`` = 65,536 (what ``embedkit.index.choose``
picks from 2.7e8 rows down to 1.7e7: 4·sqrt(N) clamped), one thread each:

- **add**: rows/s added to ``IVF65536,Flat`` and ``IVF65536,PQ{dim/8}`` (coarse
  assignment against 65,536 centroids, then PQ encoding): what one shard worker does;
- **train**: seconds of one k-means iteration over ``--train`` rows with 65,536
  centroids (faiss' own k-means), from which the build's training (2^20 rows, faiss'
  default 25 iterations) is extrapolated;
- **truth**: rows/s of exact k-NN for 1,000 recall queries (the ground truth a shard
  computes on the rows it adds).

Centroids are random unit vectors set directly (training 65,536 centroids for the add
figure would take hours here, and the add cost does not depend on their values).
Writes ``benchmarks/results/index_at_scale.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import save_results  # noqa: E402

NLIST = 65_536


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rows", type=int, default=20_000, help="rows added per measure")
    parser.add_argument("--train", type=int, default=131_072, help="rows of one k-means step")
    parser.add_argument("--out", default="index_at_scale")
    return parser.parse_args(argv)


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype("f4")
    faiss.normalize_L2(x)
    return x


def add_rate(factory: str, dim: int, rows: int) -> float:
    """Rows/s one thread adds to ``factory`` with NLIST random centroids."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.quantizer.add(unit(NLIST, dim, 1))
    if isinstance(ivf, faiss.IndexIVFPQ):
        residuals = unit(rows, dim, 2)  # PQ trained on a sample, as faiss does
        ivf.pq.train(residuals)
    ivf.is_trained = index.is_trained = True
    x = unit(rows, dim, 3)
    start = time.perf_counter()
    index.add(x)
    return rows / (time.perf_counter() - start)


def kmeans_step_seconds(dim: int, rows: int) -> float:
    """Seconds of one k-means iteration over ``rows`` rows, NLIST centroids."""
    kmeans = faiss.Kmeans(dim, NLIST, niter=1, verbose=False, spherical=True,
                          max_points_per_centroid=1 << 30)  # fmt: skip
    x = unit(rows, dim, 4)
    start = time.perf_counter()
    kmeans.train(x)
    return time.perf_counter() - start


def truth_rate(dim: int, rows: int) -> float:
    """Rows/s of exact 1,000-query k-NN (k=20) against ``rows`` rows."""
    queries, x = unit(1000, dim, 5), unit(rows, dim, 6)
    start = time.perf_counter()
    faiss.knn(queries, x, 20, metric=faiss.METRIC_INNER_PRODUCT)
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    faiss.omp_set_num_threads(1)
    pq = f"IVF{NLIST},PQ{args.dim // 8}"
    figures = {
        "dim": args.dim, "nlist": NLIST, "threads": 1,
        "add_rows_per_s_ivf_flat": round(add_rate(f"IVF{NLIST},Flat", args.dim, args.rows), 1),
        "add_rows_per_s_ivf_pq": round(add_rate(pq, args.dim, args.rows), 1), "pq_factory": pq,
        "kmeans_step_s": round(kmeans_step_seconds(args.dim, args.train), 2),
        "kmeans_step_rows": args.train,
        "truth_rows_per_s_1000_queries": round(truth_rate(args.dim, 200_000), 1),
        "command": "python benchmarks/index_at_scale.py " + " ".join(argv or sys.argv[1:]),
    }  # fmt: skip
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(f"results -> {save_results(args.out, figures)}")
    return figures


if __name__ == "__main__":
    main()
