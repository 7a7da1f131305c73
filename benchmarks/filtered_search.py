"""Benchmark filtered search: ``neighbors(ds.filter(...))`` with the whole dataset's index
and a faiss selector against the exact scan of the subset (what a filtered view got
before, and still gets with ``index="exact"``), in the same run, end to end.

Usage::

    .venv/bin/python benchmarks/filtered_search.py                  # 1M x 128, ~8 min
    .venv/bin/python benchmarks/filtered_search.py --rows 200000    # ~2 min

Data: ``--clusters`` gaussian clusters (as ``benchmarks/search.py``), cosine, with three
carried columns: ``color`` (10 values drawn independently of the vectors: ``color = 'c0'``
keeps 10 %), ``group`` (the cluster number mod 10: ``group = 0`` keeps whole clusters,
10 %, a filter that follows the vectors) and ``bucket`` (0-999, independent: the
selectivity sweep, ``bucket < t``). One saved ``--kind`` index (IVF by default).

For each filter, on ``--queries`` fresh queries (never rows of the index):

* ``cold_s``: the first call with that filter (the exact scan builds its subset index from
  the Parquet parts; the selector search reads the filter's column and makes its bitmap);
* ``batch_qps``: all queries in one call, best of ``--repeats`` (wall clock, faiss'
  threads), and ``batch_qps_1t``: queries per CPU second with faiss on one thread;
* ``single_qps``: one query per call, ``--singles`` calls (wall clock, and 1 thread);
* ``recall_at_10`` against the exact filtered answer (a hit: a score as high as the
  exact 10th, so ties count).

The default choice may differ between a batch and a single query (many queries at once
make brute force a matrix product: ``method_for``); both are recorded. The sweep
(``bucket < t``) forces the selector at each selectivity (``EXACT_SUBSET_ROWS`` and the
cost rules off), to place them. Writes ``benchmarks/results/filtered_search.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import save_results  # noqa: E402

import embedkit.index.filtered as filtered  # noqa: E402
from embedkit.index.build import build_index  # noqa: E402
from embedkit.index.search import neighbors  # noqa: E402
from embedkit.index.select import one_thread  # noqa: E402
from embedkit.plugins.info import BackboneInfo  # noqa: E402
from embedkit.store.dataset import open_latents  # noqa: E402
from embedkit.store.writer import write_latents  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--kind", default="ivf")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=200, help="one-query calls timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", default="5,10,20,50,100", help="bucket < t, of 1000")
    parser.add_argument("--out", default="filtered_search")
    return parser.parse_args(argv)


def clustered(n: int, dim: int, clusters: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """As benchmarks/search.py's, with each row's cluster."""
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, clusters, n)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):  # in chunks: no float64 copy of 1M x 128
        hi = min(n, lo + 100_000)
        noise = rng.standard_normal(size=(hi - lo, dim), dtype=np.float32)
        out[lo:hi] = centres[cluster[lo:hi]] + 0.5 * noise
    return out, cluster


def dataset(args: argparse.Namespace, folder: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x, cluster = clustered(args.rows + args.queries, args.dim, args.clusters, rng)
    columns = {
        "color": np.array([f"c{i}" for i in range(10)])[rng.integers(0, 10, args.rows)],
        "group": cluster[: args.rows] % 10,
        "bucket": rng.integers(0, 1000, args.rows),
    }
    path = folder / "lat"
    ids = [f"v{i}" for i in range(args.rows)]
    write_latents(path, ids, x[: args.rows], BackboneInfo("bench", args.dim), columns=columns)
    return path, x[args.rows :]


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_seconds(fn) -> float:
    with one_thread():
        start = time.process_time()
        fn()
        return time.process_time() - start


def recall(frame, exact, k: int, n: int) -> float:
    """Share of each query's k slots holding a row as close as the exact k-th (ties hit)."""
    got = frame["score"].to_numpy().reshape(n, k)
    kth = exact["score"].to_numpy().reshape(n, k)[:, -1:]
    return float((got >= kth - 1e-5).mean())


def figures(view, queries: np.ndarray, args, index) -> tuple[dict, object]:
    """Cold call, warm batch (wall, 1 thread), single queries (wall, 1 thread)."""
    frame, cold = timed(lambda: neighbors(view, vectors=queries, k=10, index=index))
    batch = min(timed(lambda: neighbors(view, vectors=queries, k=10, index=index))[1]
                for _ in range(args.repeats))  # fmt: skip
    batch_1t = min(cpu_seconds(lambda: neighbors(view, vectors=queries, k=10, index=index))
                   for _ in range(args.repeats))  # fmt: skip
    singles = queries[: args.singles]

    def one_by_one() -> None:
        for q in singles:
            neighbors(view, vectors=q, k=10, index=index)

    single = timed(one_by_one)[1]
    single_1t = cpu_seconds(one_by_one)
    one = neighbors(view, vectors=singles[0], k=10, index=index)
    n = len(queries)
    return {
        "search": frame.attrs["search"],
        "reason": frame.attrs["search_reason"],
        "params": frame.attrs["search_params"],
        "single_search": one.attrs["search"],
        "single_reason": one.attrs["search_reason"],
        "single_params": one.attrs["search_params"],
        "cold_s": round(cold, 3),
        "batch_qps": round(n / batch, 1),
        "batch_qps_1t": round(n / batch_1t, 1),
        "single_qps": round(len(singles) / single, 1),
        "single_qps_1t": round(len(singles) / single_1t, 1),
    }, frame


def compare(name: str, view, queries: np.ndarray, args) -> dict:
    """The exact scan of the subset and the default choice, one filter."""
    exact, truth = figures(view, queries, args, "exact")
    chosen, frame = figures(view, queries, args, None)
    chosen["recall_at_10"] = round(recall(frame, truth, 10, len(queries)), 4)
    row = {"filter": name, "rows": len(view), "exact": exact, "index": chosen}
    for key in ("batch_qps", "batch_qps_1t", "single_qps", "single_qps_1t"):
        row[f"speedup_{key}"] = round(chosen[key] / exact[key], 2)
    print(f"{name:18s} {row['rows']:>8,} rows  {chosen['search']:18s} / "
          f"{chosen['single_search']:18s} recall "
          f"{chosen['recall_at_10']:.3f}  batch {row['speedup_batch_qps']:5.2f}x "
          f"(1t {row['speedup_batch_qps_1t']:5.2f}x)  single {row['speedup_single_qps']:6.2f}x "
          f"(1t {row['speedup_single_qps_1t']:6.2f}x)  cold {chosen['cold_s']}s vs "
          f"{exact['cold_s']}s", flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    results, sweep = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path, queries = dataset(args, Path(tmp))
        built, build_s = timed(lambda: build_index(path, kind=args.kind, progress=False))
        print(f"{built.info.factory} {built.info.params} filter params "
              f"{built.info.filter_params} built in {build_s:.1f}s", flush=True)  # fmt: skip
        ds = open_latents(path)
        for name, view in (("color = 'c0'", ds.filter(color="c0")),
                           ("group = 0", ds.filter(group=0))):  # fmt: skip
            results.append(compare(name, view, queries, args))
        threshold, visited = filtered.EXACT_SUBSET_ROWS, filtered.visited_rows
        # the selector at every size and batch, to place the threshold and the cost rules
        filtered.EXACT_SUBSET_ROWS, filtered.visited_rows = 0, lambda index, params: 0.0
        try:
            for t in (int(v) for v in args.sweep.split(",")):
                view = ds.filter(pc.field("bucket") < t)
                sweep.append(compare(f"bucket < {t}", view, queries, args))
        finally:
            filtered.EXACT_SUBSET_ROWS, filtered.visited_rows = threshold, visited
    summary = {
        "rows": args.rows,
        "dim": args.dim,
        "clusters": args.clusters,
        "kind": args.kind,
        "factory": built.info.factory,
        "params": built.info.params,
        "filter_params": built.info.filter_params,
        "build_s": round(build_s, 1),
        "queries": args.queries,
        "command": "python benchmarks/filtered_search.py " + " ".join(argv or sys.argv[1:]),
        "exact_subset_rows": threshold,
        "filters": results,
        "sweep_selector_forced": sweep,
        "target": "index+selector >= 5x the exact subset scan's q/s, recall@10 >= 0.95",
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(f"results -> {save_results(args.out, summary)}")
    return summary


if __name__ == "__main__":
    main()
