"""What `embedkit.neighbors` costs on top of the faiss search it makes, end to end.

Builds a clustered N x D dataset with carried columns (a string ``source``, a string
``label``, a float ``quality``), saves a tuned IVF index (``build_index(kind="ivf")``), then
times, interleaved so both see the same machine noise, the real calls (no stub):

* batch:  ``loaded.index.search(prepared, k)`` vs ``neighbors(path, vectors=queries, k=k)``
  for ``--queries`` queries; best of ``--repeats``; the ratio neighbors / raw;
* single: one query per call, median over ``--calls`` calls of each; the fixed overhead
  is median(neighbors) - median(raw), in ms;
* by id:  ``neighbors(path, ids=[...], k=k)`` vs the raw search of the stored vectors
  with k + 1 (what excluding the query row needs), batch and single.

``neighbors`` is given ``index=loaded``, the object the raw calls search; the rows marked
``[cached copy]`` repeat it without ``index=``: ``neighbors`` then searches the copy of the
saved index it loaded and keeps, and two in-memory copies of one index can differ by a
few % in speed, which those rows include.

Each row also gives the median of the per-pair differences and ratios (a raw call and the
neighbors call right after it): on a machine shared with other jobs, the steadier figure.

Usage::

    .venv/bin/python benchmarks/query_overhead.py            # 100k x 128, ~1 min on 2 cores
    .venv/bin/python benchmarks/query_overhead.py --rows 20000 --calls 100
    .venv/bin/python benchmarks/query_overhead.py --threads 1  # no OpenMP stragglers
    .venv/bin/python benchmarks/query_overhead.py --clock cpu  # CPU time, one faiss thread

Writes ``benchmarks/results/query_overhead.json`` (``query_overhead_cpu.json`` with
``--clock cpu``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from _common import save_results

import embedkit
from embedkit.index.metric import prepare_vectors


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters (centres ~ N(0, 1), spread 0.5); returns (vectors, cluster of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    which = rng.integers(0, clusters, n)
    return centres[which] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32), which


def make_dataset(path: Path, rows: int, dim: int, clusters: int) -> np.ndarray:
    """Write the latents (with carried columns) and a saved, tuned IVF index."""
    x, which = clustered(rows, dim, clusters)
    ids = np.char.add("img_", np.arange(rows).astype(str)).tolist()
    sources = [f"photos/class_{c:03d}/{i:07d}.jpg" for i, c in enumerate(which)]
    columns = {
        "label": [f"class_{c:03d}" for c in which],
        "quality": np.random.default_rng(1).uniform(size=rows),
    }
    embedkit.write_latents(path, ids, x, embedkit.BackboneInfo("bench", dim), columns, sources)
    started = time.perf_counter()
    built = embedkit.build_index(path, kind="ivf", progress=False)
    print(f"index {built.info.factory} params {built.info.params} recall@10 "
          f"{built.info.recall} built in {time.perf_counter() - started:.1f}s")  # fmt: skip
    return x


CLOCK = time.perf_counter  # --clock cpu: time.process_time (with one faiss thread)


def timed(fn: Callable[[], object]) -> float:
    started = CLOCK()
    fn()
    return CLOCK() - started


def interleaved(raws: list[Callable], apis: list[Callable]) -> tuple[list[float], list[float]]:
    """One timing of each (raw, api) pair, run alternately so both see the same noise."""
    raw_s, api_s = [], []
    for raw, api in zip(raws, apis, strict=True):
        raw_s.append(timed(raw))
        api_s.append(timed(api))
    return raw_s, api_s


def row(name: str, queries: int, raw_s: list[float], api_s: list[float], best: bool) -> dict:
    """``best``: best of each (batch); else medians (single queries). Both ways, the median
    of the per-pair differences too: the least disturbed by other jobs on the machine."""
    pick = min if best else statistics.median
    raw, api = pick(raw_s), pick(api_s)
    pairs = list(zip(raw_s, api_s, strict=True))
    out = {
        "workload": name,
        "queries": queries,
        "calls": len(raw_s),
        "statistic": "best" if best else "median",
        "raw_ms": round(raw * 1e3, 3),
        "neighbors_ms": round(api * 1e3, 3),
        "ratio": round(api / raw, 3),
        "overhead_ms": round((api - raw) * 1e3, 3),
        "overhead_ms_paired_median": round(statistics.median(a - r for r, a in pairs) * 1e3, 3),
        "ratio_paired_median": round(statistics.median(a / r for r, a in pairs), 3),
    }
    print(f"{name:28s} raw {out['raw_ms']:9.3f} ms  neighbors {out['neighbors_ms']:9.3f} ms  "
          f"ratio {out['ratio']:.3f}  overhead {out['overhead_ms']:7.3f} ms  "
          f"(paired median: ratio {out['ratio_paired_median']:.3f}, "
          f"overhead {out['overhead_ms_paired_median']:.3f} ms)")  # fmt: skip
    return out


def workloads(
    path: Path, search: Callable, data: dict, args: argparse.Namespace, suffix: str, **via
) -> list[dict]:
    """The four timings; ``via``: extra ``neighbors`` arguments (``index=loaded``)."""
    k, n, queries, prepared, ids, stored = args.k, args.queries, *data.values()
    batch, calls = range(args.repeats), range(min(args.calls, n))
    nb = embedkit.neighbors
    return [
        row("batch vectors" + suffix, n, *interleaved(
            [lambda: search(prepared, k) for _ in batch],
            [lambda: nb(path, vectors=queries, k=k, **via) for _ in batch],
        ), best=True),
        row("batch ids" + suffix, n, *interleaved(
            [lambda: search(stored, k + 1) for _ in batch],
            [lambda: nb(path, ids=ids, k=k, **via) for _ in batch],
        ), best=True),
        row("single vector" + suffix, 1, *interleaved(
            [lambda i=i: search(prepared[i : i + 1], k) for i in calls],
            [lambda i=i: nb(path, vectors=queries[i], k=k, **via) for i in calls],
        ), best=False),
        row("single id" + suffix, 1, *interleaved(
            [lambda i=i: search(stored[i : i + 1], k + 1) for i in calls],
            [lambda i=i: nb(path, ids=[ids[i]], k=k, **via) for i in calls],
        ), best=False),
    ]  # fmt: skip


def measure(path: Path, x: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """First ``neighbors(path, ..., index=loaded)``: the very faiss object the raw calls
    search. Then ``neighbors(path, ...)``, which searches the copy of the saved index it
    loaded and keeps: two copies of one index can differ by a few % in speed (where their
    memory landed), which that comparison also shows."""
    queries, _ = clustered(args.queries, args.dim, args.clusters, seed=7)  # same centres
    loaded = embedkit.load_index(path)
    chosen = np.random.default_rng(3).choice(loaded.ntotal, args.queries, replace=False)
    ids = loaded.ids[chosen].tolist()
    data = {
        "queries": queries,
        "prepared": prepare_vectors(queries, "cosine", "queries"),
        "ids": ids,
        "stored": prepare_vectors(x[[int(i[4:]) for i in ids]], "cosine", "stored"),
    }
    for via in ({"index": loaded}, {}):  # warm: the index, its columns and id table
        embedkit.neighbors(path, vectors=queries[:2], k=args.k, **via)
        embedkit.neighbors(path, ids=ids[:2], k=args.k, **via)
    search = loaded.index.search
    rows = workloads(path, search, data, args, "", index=loaded)
    return rows + workloads(path, search, data, args, " [cached copy]")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=25, help="batch timings: best of")
    parser.add_argument("--calls", type=int, default=300, help="single-query timings: median of")
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time, faiss on one thread (time other jobs take is not "
        "counted: steadier on a shared machine)",
    )
    parser.add_argument("--dir", help="keep the dataset here and reuse it (default: a temp dir)")
    args = parser.parse_args(argv)
    global CLOCK
    if args.clock == "cpu":
        CLOCK, args.threads = time.process_time, 1
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / f"lat_{args.rows}x{args.dim}"
        if (path / "index" / "index.json").is_file():
            x = clustered(args.rows, args.dim, args.clusters)[0]
        else:
            x = make_dataset(path, args.rows, args.dim, args.clusters)
        rows = measure(path, x, args)
    summary = {
        "rows": args.rows,
        "dim": args.dim,
        "k": args.k,
        "metric": "cosine",
        "carried_columns": ["source", "label", "quality"],
        "faiss_threads": faiss.omp_get_max_threads(),
        "clock": args.clock,
        "repeats": args.repeats,
        "calls": args.calls,
        "results": rows,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "total_s": round(time.perf_counter() - started, 1),
    }
    name = "query_overhead" if args.clock == "wall" else "query_overhead_cpu"
    print(f"results -> {save_results(name, summary)}")
    return summary


if __name__ == "__main__":
    main()
