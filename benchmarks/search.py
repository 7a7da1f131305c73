"""Benchmark index kinds: build time, recall@10 vs exact, raw faiss QPS vs embedkit.neighbors.

Usage::

    .venv/bin/python benchmarks/search.py                 # 100k x 128, ~1-3 min on 2 cores
    .venv/bin/python benchmarks/search.py --rows 20000 --dim 64 --kinds flat,ivf

Data: ``--clusters`` gaussian clusters (centres ~ N(0, 1), spread 0.5 per dimension), cosine
metric. Queries are 1000 held-out points from the same distribution. For each kind the
same index and the same queries are searched by ``index.search`` (pre-normalized
float32, the raw faiss cost) and by ``embedkit.neighbors(vectors=..., index=...)``
(validation, normalization, id and metadata lookup, DataFrame); each timing is the best
of ``--repeats`` alternating runs. On a shared machine that ratio is noisy, so the overhead
is also timed alone: ``neighbors`` on an index whose ``search`` returns a precomputed
result (``overhead_ms_search_stubbed``; ``overhead_stubbed_fraction`` = that / raw time).
``--threads 1`` avoids OpenMP stragglers when other jobs share the cores.
Writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedkit.index.build import build_index  # noqa: E402
from embedkit.index.metric import prepare_vectors  # noqa: E402
from embedkit.index.search import neighbors  # noqa: E402
from embedkit.index.tune import recall_at_k  # noqa: E402
from embedkit.plugins.info import BackboneInfo  # noqa: E402
from embedkit.store.dataset import open_latents  # noqa: E402
from embedkit.store.writer import write_latents  # noqa: E402


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(
        np.float32
    )


class FixedResult:
    """Stands in for a faiss index: returns a precomputed result (to time the overhead)."""

    def __init__(self, result: tuple[np.ndarray, np.ndarray], ntotal: int) -> None:
        self.result, self.ntotal = result, ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.result


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq,auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.json"))
    args = parser.parse_args(argv)

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    data = clustered(args.rows + args.queries, args.dim, args.clusters, rng)
    base, queries = data[: args.rows], data[args.rows :]
    prepared = prepare_vectors(queries, "cosine", "queries")
    truth = faiss.knn(
        prepared, prepare_vectors(base, "cosine", "base"), args.k, faiss.METRIC_INNER_PRODUCT
    )[1]

    with tempfile.TemporaryDirectory() as tmp:
        ids = [f"v{i}" for i in range(args.rows)]
        sources = [f"images/{i}.png" for i in range(args.rows)]
        info = BackboneInfo("bench", dim=args.dim)
        write_latents(Path(tmp) / "lat", ids, base, info, sources=sources)
        ds = open_latents(Path(tmp) / "lat")

        results = []
        for kind in args.kinds.split(","):
            built = build_index(ds, kind=kind, progress=False, save=False)
            row_of_id = np.array([int(i[1:]) for i in built.ids])  # "v123" -> dataset row
            found = row_of_id[built.search(prepared, args.k)[1]]
            neighbors(ds, vectors=queries[:10], k=args.k, index=built)  # warm the metadata cache
            raw_s, api_s = [], []
            for _ in range(args.repeats):  # alternate to share the machine's noise fairly
                raw_s.append(best_time(lambda b=built: b.index.search(prepared, args.k), 1))
                api_s.append(
                    best_time(lambda b=built: neighbors(ds, vectors=queries, k=args.k, index=b), 1)
                )
            raw, api = min(raw_s), min(api_s)
            # the overhead alone: neighbors() with the faiss search replaced by its result
            stub = dataclasses.replace(
                built, index=FixedResult(built.index.search(prepared, args.k), built.ntotal)
            )
            overhead = best_time(
                lambda st=stub: neighbors(ds, vectors=queries, k=args.k, index=st),
                max(args.repeats, 10),
            )
            row = {
                "kind": kind,
                "chosen": built.info.kind,
                "factory": built.info.factory,
                "params": built.info.params,
                "build_s": round(built.info.build_seconds, 2),
                "recall_at_10": round(recall_at_k(found, truth), 4),
                "recall_at_10_build_sample": built.info.recall,
                "raw_qps": round(args.queries / raw, 1),
                "neighbors_qps": round(args.queries / api, 1),
                "neighbors_over_raw_time": round(api / raw, 3),
                "overhead_ms_per_call": round((api - raw) * 1e3, 2),
                "overhead_ms_search_stubbed": round(overhead * 1e3, 3),
                "overhead_stubbed_fraction": round(overhead / raw, 4),
            }
            results.append(row)
            print(
                f"{kind:6s} {row['factory']:28s} build {row['build_s']:6.2f}s "
                f"recall@10 {row['recall_at_10']:.3f}  raw {row['raw_qps']:9.0f} q/s  "
                f"neighbors {row['neighbors_qps']:9.0f} q/s  "
                f"ratio {row['neighbors_over_raw_time']:.3f}  "
                f"overhead {row['overhead_ms_search_stubbed']:.2f} ms "
                f"({100 * row['overhead_stubbed_fraction']:.1f}%)",
                flush=True,
            )

    exact = next((r for r in results if r["factory"] == "Flat" and r["kind"] == "flat"), None)
    auto = next((r for r in results if r["kind"] == "auto"), None)
    summary = {
        "rows": args.rows,
        "dim": args.dim,
        "clusters": args.clusters,
        "queries": args.queries,
        "k": args.k,
        "metric": "cosine",
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "gpus": faiss.get_num_gpus(),
            "faiss": faiss.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
        "auto_speedup_vs_exact": (
            round(auto["raw_qps"] / exact["raw_qps"], 1) if auto and exact else None
        ),
        "total_s": round(time.perf_counter() - started, 1),
    }
    print()
    print(f"{'kind':6s} {'factory':28s} {'build s':>8s} {'recall':>7s} {'raw q/s':>9s} "
          f"{'api q/s':>9s} {'api/raw':>8s} {'ovh ms':>7s} {'ovh %':>6s}")  # fmt: skip
    for r in results:
        print(
            f"{r['kind']:6s} {r['factory']:28s} {r['build_s']:8.2f} {r['recall_at_10']:7.3f} "
            f"{r['raw_qps']:9.0f} {r['neighbors_qps']:9.0f} {r['neighbors_over_raw_time']:8.3f} "
            f"{r['overhead_ms_search_stubbed']:7.2f} {100 * r['overhead_stubbed_fraction']:6.1f}"
        )
    if summary["auto_speedup_vs_exact"]:
        print(f"auto ({auto['factory']}) is {summary['auto_speedup_vs_exact']}x exact search QPS")
    print(f"total {summary['total_s']}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"results -> {out}")
    return summary


if __name__ == "__main__":
    main()
