"""What the explorer's HTTP layer costs: ``/api/neighbors`` over real HTTP against the
same ``neighbors()`` call made directly, and ``/api/items`` pages at a million rows.

* neighbours: ``--rows`` x ``--dim`` clustered latents with two label columns; the
  server (uvicorn via ``start_in_thread``, an ``httpx`` keep-alive client) and the
  direct call ``neighbors(ds, ids=[id], k=k, index=..., columns=[])`` (what the route
  calls) are timed interleaved, query by query, so both see the same machine noise;
  p50/p95 of each and of the per-query difference (target: HTTP adds <= 10 ms at p95).
  ``--index exact`` (default) searches brute force as a fresh dataset does; another
  kind (``ivf``, ``hnsw``, ``auto``) is built and saved first, and the server uses it.
* items: ``--item-rows`` rows (dim 8) with label columns ``color`` (4 values),
  ``shape`` (3), ``filled`` (bool); the first page (reads the label table), then
  pages at random offsets unfiltered, with one and two ``f.`` filters (first call per
  filter computes it; later pages reuse it), and with an id substring ``q`` (a new
  one each call: always computed). Target: <= 200 ms a page.

Usage::

    .venv/bin/python benchmarks/serve_latency.py                      # 100k x 512, 1M items
    .venv/bin/python benchmarks/serve_latency.py --rows 5000 --dim 64 --item-rows 20000
    .venv/bin/python benchmarks/serve_latency.py --index ivf --threads 1

``--threads N`` sets ``OMP_NUM_THREADS`` before faiss loads, for the server's threads
as for the direct calls (``faiss.omp_set_num_threads`` would set the calling thread's
only); on a small shared machine one thread avoids OpenMP stragglers in both.

Writes ``benchmarks/results/serve_latency.json`` (``--out``).
"""

from __future__ import annotations

import os
import sys

if "--threads" in sys.argv:  # before numpy, torch and faiss load their OpenMP runtimes
    os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import save_results

import embedkit
from embedkit.index.search import neighbors
from embedkit.serve.server import start_in_thread

COLORS = np.array(["red", "green", "blue", "yellow"])
SHAPES = np.array(["circle", "square", "triangle"])


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "max_ms": round(float(ms.max()), 3),
        "calls": len(ms),
    }


def write_dataset(path: Path, rows: int, dim: int, seed: int = 0) -> list[str]:
    """Clustered latents with label columns; returns the ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim)).astype(np.float32)
    ids = [f"images/{i:07d}.png" for i in range(rows)]
    step = 200_000  # written in slices: memory stays bounded at a million rows
    info = embedkit.BackboneInfo("bench", dim=dim)
    with embedkit.LatentWriter(path, info) as writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            which = rng.integers(0, len(centres), n)
            vectors = centres[which] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
            columns = {
                "color": COLORS[rng.integers(0, 4, n)],
                "shape": SHAPES[rng.integers(0, 3, n)],
                "filled": rng.random(n) < 0.5,
            }
            chunk = ids[start : start + n]
            writer.write(chunk, [""] * n, vectors, columns=columns)
    return ids


def neighbour_latency(args: argparse.Namespace, root: Path) -> dict:
    path = root / "neighbours"
    started = time.perf_counter()
    ids = write_dataset(path, args.rows, args.dim)
    written = time.perf_counter() - started
    index = "exact"
    if args.index != "exact":
        embedkit.build_index(path, kind=args.index, progress=False)
        index = None
    ds = embedkit.open_latents(path)
    queries = list(np.random.default_rng(1).choice(ids, args.queries + args.warmup))
    url, stop = start_in_thread(path)
    direct, http, diff = [], [], []
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for n, id_ in enumerate(queries):
                t0 = time.perf_counter()
                neighbors(ds, ids=[id_], k=args.k, index=index, columns=[])
                t1 = time.perf_counter()
                response = client.get("/api/neighbors", params={"id": id_, "k": args.k})
                t2 = time.perf_counter()
                response.raise_for_status()
                if n >= args.warmup:  # the first calls build the exact index, read ids
                    direct.append(t1 - t0)
                    http.append(t2 - t1)
                    diff.append((t2 - t1) - (t1 - t0))
    finally:
        stop()
    return {
        "rows": args.rows,
        "dim": args.dim,
        "k": args.k,
        "index": args.index,
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "write_seconds": round(written, 2),
        "direct": percentiles(direct),
        "http": percentiles(http),
        "http_minus_direct": percentiles(diff),
        "added_p95_ms": round(float(np.percentile(http, 95) - np.percentile(direct, 95)) * 1000, 3),
    }


def timed_get(client: httpx.Client, params: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.get("/api/items", params=params)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def pages(client: httpx.Client, total: int, extra: dict, calls: int, rng) -> dict:
    """First call, then ``calls`` pages at random offsets within the first ``total``."""
    first, body = timed_get(client, {**extra, "limit": 60})
    seconds = []
    for _ in range(calls):
        offset = int(rng.integers(0, max(1, body["total"] - 60)))
        seconds.append(timed_get(client, {**extra, "offset": offset, "limit": 60})[0])
    return {"first_ms": round(first * 1000, 3), "total": body["total"], **percentiles(seconds)}


def items_latency(args: argparse.Namespace, root: Path) -> dict:
    path = root / "items"
    started = time.perf_counter()
    write_dataset(path, args.item_rows, 8, seed=2)
    written = time.perf_counter() - started
    rng = np.random.default_rng(3)
    url, stop = start_in_thread(path)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            info_started = time.perf_counter()
            client.get("/api/info").raise_for_status()
            info_s = time.perf_counter() - info_started
            result = {
                "rows": args.item_rows,
                "write_seconds": round(written, 2),
                "info_first_ms": round(info_s * 1000, 3),
                "unfiltered": pages(client, args.item_rows, {}, args.pages, rng),
                "one_filter": pages(client, 0, {"f.color": "red"}, args.pages, rng),
                "two_filters": pages(
                    client, 0, {"f.color": "blue", "f.filled": "true"}, args.pages, rng
                ),
            }
            fresh = []  # a new substring each call: never a kept selection
            for _ in range(args.pages):
                q = f"{int(rng.integers(0, 10_000)):04d}"
                fresh.append(timed_get(client, {"q": q, "limit": 60})[0])
            result["id_substring"] = percentiles(fresh)
    finally:
        stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--index", default="exact", help="exact | flat | ivf | hnsw | auto")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--item-rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: default)")
    parser.add_argument("--out", default="serve_latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedkit-serve-bench-") as tmp:
        result = {"neighbors": neighbour_latency(args, Path(tmp))}
        n = result["neighbors"]
        print(
            f"neighbors {args.rows:,} x {args.dim} ({args.index}), k={args.k}: direct p50 "
            f"{n['direct']['p50_ms']:.2f} / p95 {n['direct']['p95_ms']:.2f} ms, HTTP p50 "
            f"{n['http']['p50_ms']:.2f} / p95 {n['http']['p95_ms']:.2f} ms; HTTP adds "
            f"{n['added_p95_ms']:.2f} ms at p95 (per-query difference p50 "
            f"{n['http_minus_direct']['p50_ms']:.2f}, p95 {n['http_minus_direct']['p95_ms']:.2f})",
            flush=True,
        )
        result["items"] = items_latency(args, Path(tmp))
    items = result["items"]
    for name in ("unfiltered", "one_filter", "two_filters"):
        row = items[name]
        print(
            f"items {args.item_rows:,} rows, {name}: first {row['first_ms']:.1f} ms, then p50 "
            f"{row['p50_ms']:.1f} / p95 {row['p95_ms']:.1f} ms (total {row['total']:,})"
        )
    q = items["id_substring"]
    print(f"items, new id substring each call: p50 {q['p50_ms']:.1f} / p95 {q['p95_ms']:.1f} ms")
    print(f"results -> {save_results(args.out, result)}")


if __name__ == "__main__":
    main()
