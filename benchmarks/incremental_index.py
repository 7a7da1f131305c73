"""Benchmark incremental indexing: adding 10 % new rows to a saved index in place
(``embedkit index`` / ``update_index``) against building it from scratch, in the same run,
and recall@10 on fresh queries afterwards.

Usage::

    .venv/bin/python benchmarks/incremental_index.py                  # 1M x 128 IVF, ~6 min
    .venv/bin/python benchmarks/incremental_index.py --rows 100000    # ~1 min
    .venv/bin/python benchmarks/incremental_index.py --kind hnsw --rows 200000

Data: ``--clusters`` gaussian clusters (centres ~ N(0, 1), spread 0.5 per dimension, as
``benchmarks/search.py``), cosine. The dataset is written as parts of 100,000 rows; then

1. ``build_index(kind=--kind)`` over ``--rows`` rows, timed end to end (streaming the
   parts, training, adding, tuning, saving): the full build;
2. ``--add`` (10 %) more rows from the same distribution are written as a new part, as
   ``embedkit embed`` appends one, and ``update_index`` is timed end to end (reading the
   saved index, adding the new rows, re-measuring recall on the kept recall queries,
   saving): the update;
3. a full rebuild over all rows, timed: what the update replaces;
4. one part is deleted and ``update_index`` timed again (``remove_ids``).

Recall@10 is measured on ``--queries`` fresh queries (never rows of the index) against
exact distances over every row (ties count as hits), for the updated and the rebuilt
index. Writes ``benchmarks/results/incremental_index.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import save_results  # noqa: E402
from search import clustered  # noqa: E402

from embedkit.index.build import build_index  # noqa: E402
from embedkit.index.metric import prepare_vectors  # noqa: E402
from embedkit.index.recall import Truth, recall_per_query  # noqa: E402
from embedkit.index.search import clear_index_cache  # noqa: E402
from embedkit.index.update import update_index  # noqa: E402
from embedkit.plugins.info import BackboneInfo  # noqa: E402
from embedkit.store.dataset import open_latents  # noqa: E402
from embedkit.store.writer import write_latents  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--add", type=float, default=0.10, help="new rows, as a share of --rows")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--kind", default="ivf")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default="incremental_index")
    return parser.parse_args(argv)


def write(path: Path, x: np.ndarray, start: int, dim: int) -> None:
    ids = [f"v{i}" for i in range(start, start + len(x))]
    write_latents(path, ids, x, BackboneInfo("bench", dim=dim))


def fresh_recall(loaded, queries: np.ndarray, base: np.ndarray, ids: list[str]) -> float:
    """recall@10 of ``loaded`` on ``queries`` against exact distances over ``base``."""
    dist, truth_rows = faiss.knn(queries, base, 20, metric=faiss.METRIC_INNER_PRODUCT)
    truth = Truth.from_knn(queries, dist, truth_rows, 10, similarity=True)
    found = loaded.search(queries, 10)[1]
    row_of = {name: row for row, name in enumerate(ids)}
    rows_of_faiss = np.array([row_of[i] for i in loaded.ids])
    rows = np.where(found >= 0, rows_of_faiss[np.maximum(found, 0)], -1)
    exact = np.einsum("qkd,qd->qk", base[np.maximum(rows, 0)], queries)
    return float(recall_per_query(rows, truth, exact).mean())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(args: argparse.Namespace, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    added = int(args.rows * args.add)
    data = clustered(args.rows + added + args.queries, args.dim, args.clusters, rng)
    base, new, queries = np.split(data, [args.rows, args.rows + added])
    path = folder / "lat"
    write(path, base, 0, args.dim)
    print(f"{args.rows:,} x {args.dim} written; building {args.kind}", flush=True)
    built, build_s = timed(lambda: build_index(path, kind=args.kind, progress=False))
    print(f"full build {built.info.factory} {build_s:.1f}s", flush=True)
    write(path, new, args.rows, args.dim)  # a new part, as `embedkit embed` appends
    clear_index_cache()
    updated, update_s = timed(lambda: update_index(path))
    print(f"update {update_s:.1f}s: {updated.info.update['reason']}", flush=True)
    everything = prepare_vectors(np.concatenate([base, new]), "cosine", "x")
    ids = [f"v{i}" for i in range(len(everything))]
    fresh = prepare_vectors(queries, "cosine", "q")
    recall_updated = fresh_recall(updated, fresh, everything, ids)
    rebuilt, rebuild_s = timed(lambda: build_index(path, kind=args.kind, progress=False))
    recall_rebuilt = fresh_recall(rebuilt, fresh, everything, ids)
    print(f"rebuild {rebuild_s:.1f}s; recall@10 updated {recall_updated:.4f} "
          f"rebuilt {recall_rebuilt:.4f}", flush=True)  # fmt: skip
    open_latents(path).files[0].unlink()  # a part removed
    removed, remove_s = timed(lambda: update_index(path))
    print(f"removal update {remove_s:.1f}s: {removed.info.update['reason']}", flush=True)
    return {
        "factory": built.info.factory,
        "params_built": built.info.params,
        "build_s": round(build_s, 2),
        "update_s": round(update_s, 2),
        "rebuild_s": round(rebuild_s, 2),
        "update_over_build": round(update_s / build_s, 4),
        "update_over_rebuild": round(update_s / rebuild_s, 4),
        "update": updated.info.update,
        "params_updated": updated.info.params,
        "recall_at_10_updated": round(recall_updated, 4),
        "recall_at_10_rebuilt": round(recall_rebuilt, 4),
        "removal_update_s": round(remove_s, 2),
        "removal_update": removed.info.update,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args, Path(tmp))
    summary = {
        "rows": args.rows,
        "added_rows": int(args.rows * args.add),
        "dim": args.dim,
        "clusters": args.clusters,
        "kind": args.kind,
        "queries": args.queries,
        "command": "python benchmarks/incremental_index.py " + " ".join(argv or sys.argv[1:]),
        **figures,
        "target": "update <= 0.15 x full build, recall@10 >= 0.95",
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(
        f"update {summary['update_s']}s = {summary['update_over_build']:.1%} of the build "
        f"({summary['build_s']}s), {summary['update_over_rebuild']:.1%} of the rebuild "
        f"({summary['rebuild_s']}s); recall@10 {summary['recall_at_10_updated']}"
    )
    print(f"results -> {save_results(args.out, summary)}")
    return summary


if __name__ == "__main__":
    main()
