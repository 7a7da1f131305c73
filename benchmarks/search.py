"""Benchmark index kinds and ``auto``: build time, recall@10 of fresh queries against exact
distances, QPS of every kind in the same run, and raw faiss QPS vs embedkit.neighbors.

Usage::

    .venv/bin/python benchmarks/search.py                   # 100k x 128, a few minutes on 2 cores
    .venv/bin/python benchmarks/search.py --rows 1000000    # 1M x 128: tens of minutes on 2 cores
    .venv/bin/python benchmarks/search.py --rows 20000 --dim 64 --kinds flat,ivf,auto
    .venv/bin/python benchmarks/search.py --shapes 5000     # real latents: shapes x pixels

Data: ``--clusters`` gaussian clusters (centres ~ N(0, 1), spread 0.5 per dimension), cosine
metric. The ``--queries`` fresh queries are drawn from the same distribution and are not
rows of the index. With ``--shapes N`` the data are real latents instead: the built-in
shapes corpus (N images, 32 px) embedded with the ``pixels`` backbone; the fresh queries
are 1000 more shapes drawn with another seed.

Recall@10 counts a found neighbour as a hit when its exact distance is as good as the
10th true one (ties and duplicates are hits), computed from the vectors themselves. QPS:
``raw_qps`` is ``index.search`` wall-clock with faiss' default threads, best of
``--repeats`` runs taken in rounds over all the kinds (so a busy moment of a shared machine
hits them alike); ``cpu_qps_1t`` is queries per CPU second on one thread (steadier when
other jobs share the cores). With ``--neighbors`` (default) the same queries also go
through ``embedkit.neighbors(vectors=..., index=...)`` and its overhead is timed alone
(``overhead_ms_search_stubbed``: the faiss search replaced by its result).
``--threads 1`` avoids OpenMP stragglers when other jobs share the cores.
Writes ``benchmarks/results/search.json`` (``--out``).
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
from embedkit.index.select import cpu_qps  # noqa: E402
from embedkit.index.tune import Truth, recall_per_query  # noqa: E402
from embedkit.plugins.info import BackboneInfo  # noqa: E402
from embedkit.store.dataset import LatentDataset, open_latents  # noqa: E402
from embedkit.store.writer import write_latents  # noqa: E402


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):  # in chunks: no float64 copy of 1M x 128
        hi = min(n, lo + 100_000)
        noise = rng.standard_normal(size=(hi - lo, dim), dtype=np.float32)
        out[lo:hi] = centres[rng.integers(0, clusters, hi - lo)] + 0.5 * noise
    return out


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


def synthetic(args, tmp: Path) -> tuple[LatentDataset, np.ndarray]:
    """A latent dataset of clustered vectors, and fresh queries from the same clusters."""
    rng = np.random.default_rng(0)
    data = clustered(args.rows + args.queries, args.dim, args.clusters, rng)
    base, queries = data[: args.rows], data[args.rows :]
    ids = [f"v{i}" for i in range(args.rows)]
    sources = [f"images/{i}.png" for i in range(args.rows)]
    info = BackboneInfo("bench", dim=args.dim)
    write_latents(tmp / "lat", ids, base, info, sources=sources)
    return open_latents(tmp / "lat"), queries


def shapes(args, tmp: Path) -> tuple[LatentDataset, np.ndarray]:
    """The shapes corpus embedded with ``pixels``; queries: shapes drawn with another seed."""
    from embedkit import embed
    from embedkit.images import make_shapes

    make_shapes(tmp / "corpus", n=args.shapes, size=32, seed=0)
    embed(tmp / "corpus", "pixels", tmp / "lat", progress=False)
    make_shapes(tmp / "fresh", n=args.queries, size=32, seed=1)
    embed(tmp / "fresh", "pixels", tmp / "qlat", progress=False)
    return open_latents(tmp / "lat"), open_latents(tmp / "qlat").to_numpy()


def dataset_rows(ds: LatentDataset, metric: str) -> tuple[np.ndarray, dict[str, int]]:
    """All prepared vectors (for exact distances) and each id's row."""
    vectors, ids = [], []
    for batch in ds.iter_batches(batch_size=100_000):
        vectors.append(prepare_vectors(batch.vectors, metric, "latents"))
        ids.extend(batch.ids)
    return np.concatenate(vectors), {name: row for row, name in enumerate(ids)}


def fresh_recall(built, queries: np.ndarray, base: np.ndarray, row_of: dict, truth: Truth):
    """Recall@k of ``built`` on ``queries`` against exact distances (ties are hits)."""
    found = built.search(queries, truth.k)[1]
    rows_of_faiss = np.array([row_of[i] for i in built.ids])
    rows = np.where(found >= 0, rows_of_faiss[np.maximum(found, 0)], -1)
    exact = np.einsum("qkd,qd->qk", base[np.maximum(rows, 0)], queries)
    return float(recall_per_query(rows, truth, exact).mean())


def time_rounds(built: dict, queries: np.ndarray, k: int, repeats: int) -> dict[str, float]:
    """Best wall-clock seconds of ``index.search`` per kind, in rounds over all kinds."""
    best = dict.fromkeys(built, float("inf"))
    for _ in range(repeats):
        for kind, index in built.items():
            seconds = best_time(lambda i=index: i.index.search(queries, k), 1)
            best[kind] = min(best[kind], seconds)
    return best


def api_figures(ds, built, raw_queries, prepared, k, repeats) -> dict:
    """``neighbors`` QPS on the same index and queries, and its overhead timed alone."""
    neighbors(ds, vectors=raw_queries[:10], k=k, index=built)  # warm the metadata cache
    api = best_time(lambda: neighbors(ds, vectors=raw_queries, k=k, index=built), repeats)
    raw = best_time(lambda: built.index.search(prepared, k), repeats)
    stub = dataclasses.replace(
        built, index=FixedResult(built.index.search(prepared, k), built.ntotal)
    )
    overhead = best_time(
        lambda: neighbors(ds, vectors=raw_queries, k=k, index=stub), max(repeats, 10)
    )
    return {
        "neighbors_qps": round(len(prepared) / api, 1),
        "neighbors_over_raw_time": round(api / raw, 3),
        "overhead_ms_search_stubbed": round(overhead * 1e3, 3),
        "overhead_stubbed_fraction": round(overhead / raw, 4),
    }


def row_for(kind: str, built, recall: float) -> dict:
    info = built.info
    return {
        "kind": kind,
        "chosen": info.kind,
        "factory": info.factory,
        "params": info.params,
        "build_s": round(info.build_seconds, 2),
        "selection_s": info.selection.get("seconds"),
        "recall_at_10": round(recall, 4),
        "recall_at_10_build_sample": info.recall,
        "recall_lower_bound_build": info.recall_lower,
        "recall_after_add_build": info.recall_after_add,
        "retuned_after_add": info.retuned_after_add,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--shapes", type=int, default=0, help="real latents: N shapes x pixels")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95, help="recall@k target")
    parser.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq,ivfsq,auto")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--neighbors", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.json"))
    return parser.parse_args(argv)


def measure(args, ds: LatentDataset, raw_queries: np.ndarray) -> tuple[list[dict], dict]:
    """Build every kind, then measure recall and QPS of all of them."""
    prepared = prepare_vectors(raw_queries, "cosine", "queries")
    base, row_of = dataset_rows(ds, "cosine")
    kk = min(2 * args.k, len(base))
    dist, ids = faiss.knn(prepared, base, kk, metric=faiss.METRIC_INNER_PRODUCT)
    truth = Truth.from_knn(prepared, dist, ids, args.k, similarity=True)
    built, rows = {}, {}
    for kind in args.kinds.split(","):
        built[kind] = build_index(
            ds, kind=kind, progress=False, save=False, target_recall=args.target
        )
        recall = fresh_recall(built[kind], prepared, base, row_of, truth)
        rows[kind] = row_for(kind, built[kind], recall)
        print(f"built {kind:6s} {rows[kind]['factory']:28s} in {rows[kind]['build_s']:7.2f}s "
              f"recall@10 {recall:.4f}", flush=True)  # fmt: skip
    del base
    wall = time_rounds(built, prepared, args.k, args.repeats)
    for kind, index in built.items():
        rows[kind]["raw_qps"] = round(len(prepared) / wall[kind], 1)
        rows[kind]["cpu_qps_1t"] = round(cpu_qps(index.index, prepared, args.k), 1)
        if args.neighbors:
            rows[kind].update(api_figures(ds, index, raw_queries, prepared, args.k, args.repeats))
    auto = built.get("auto")
    return list(rows.values()), (auto.info.selection if auto is not None else {})


def summarize(args, results: list[dict], selection: dict, started: float, data: str) -> dict:
    by_kind = {r["kind"]: r for r in results}
    # the best kind: the fastest explicit kind that reaches the target on fresh queries
    others = [r for r in results if r["kind"] != "auto" and r["recall_at_10"] >= args.target]
    best = max(others, key=lambda r: r["raw_qps"]) if others else None
    best_1t = max(others, key=lambda r: r["cpu_qps_1t"]) if others else None
    auto, exact = by_kind.get("auto"), by_kind.get("flat")

    def ratio(a, b, key):
        return round(a[key] / b[key], 3) if a and b else None

    return {
        "data": data,
        "rows": args.rows,
        "dim": args.dim,
        "clusters": None if args.shapes else args.clusters,
        "queries": args.queries,
        "k": args.k,
        "target_recall": args.target,
        "metric": "cosine",
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "gpus": faiss.get_num_gpus(),
            "faiss": faiss.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "results": results,
        "auto_selection": selection,
        "best_kind": best["kind"] if best else None,
        "auto_over_best_qps": ratio(auto, best, "raw_qps"),
        "auto_over_best_cpu_qps_1t": ratio(auto, best_1t, "cpu_qps_1t"),
        "auto_speedup_vs_exact": ratio(auto, exact, "raw_qps"),
        "auto_speedup_vs_exact_cpu_1t": ratio(auto, exact, "cpu_qps_1t"),
        "total_s": round(time.perf_counter() - started, 1),
    }


def report(summary: dict) -> None:
    print()
    print(f"{'kind':6s} {'factory':28s} {'build s':>8s} {'recall':>7s} {'raw q/s':>9s} "
          f"{'1t q/s':>8s} {'api q/s':>9s} {'ovh %':>6s}")  # fmt: skip
    for r in summary["results"]:
        api = f"{r['neighbors_qps']:9.0f}" if "neighbors_qps" in r else f"{'-':>9s}"
        ovh = f"{100 * r['overhead_stubbed_fraction']:6.1f}" if "neighbors_qps" in r else "     -"
        print(
            f"{r['kind']:6s} {r['factory']:28s} {r['build_s']:8.2f} {r['recall_at_10']:7.3f} "
            f"{r['raw_qps']:9.0f} {r['cpu_qps_1t']:8.0f} {api} {ovh}"
        )
    sel = summary["auto_selection"]
    if sel:
        print(f"auto measured on {sel['sample_rows']:,} rows in {sel['seconds']:.1f}s:")
        for c in sel["candidates"]:
            print(f"  {c['kind']:6s} {c['factory']:28s} recall {c['recall']:.3f} "
                  f"(bound {c['recall_lower']:.3f}) {c['qps_sample']:9.0f} q/s/core on the "
                  f"sample -> {c['qps_predicted']:9.0f} predicted")  # fmt: skip
    print(
        f"best kind reaching {summary['target_recall']}: {summary['best_kind']}; "
        f"auto/best q/s {summary['auto_over_best_qps']} "
        f"(1 thread {summary['auto_over_best_cpu_qps_1t']}); auto vs exact "
        f"{summary['auto_speedup_vs_exact']}x (1 thread {summary['auto_speedup_vs_exact_cpu_1t']}x)"
    )
    print(f"total {summary['total_s']}s")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.shapes:
            ds, queries = shapes(args, Path(tmp))
            data = f"shapes corpus ({args.shapes} images, 32 px) x pixels backbone"
            args.rows, args.dim, args.queries = len(ds), ds.dim, len(queries)
        else:
            ds, queries = synthetic(args, Path(tmp))
            data = f"{args.clusters} gaussian clusters"
        results, selection = measure(args, ds, queries)
    summary = summarize(args, results, selection, started, data)
    report(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"results -> {out}")
    return summary


if __name__ == "__main__":
    main()
