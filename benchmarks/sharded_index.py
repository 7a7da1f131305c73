"""Benchmark the sharded index build (``build_index(engine="ray")``, ``embedkit index
--engine ray``) on a simulated Ray cluster against the single-process build of the same
data, in the same run: end-to-end build times, the add pass split over workers, what
one worker adds per second (the figure a cluster estimate scales), and recall@10 of
both on fresh queries (never rows of the index).

Usage::

    .venv/bin/python benchmarks/sharded_index.py                          # 1M x 128 IVF-Flat
    .venv/bin/python benchmarks/sharded_index.py --rows 200000 --nodes 2  # ~1 min
    .venv/bin/python benchmarks/sharded_index.py --kind ivfpq --on-disk

Data: ``--clusters`` gaussian clusters (as ``benchmarks/search.py``), cosine, written as
parts of 100,000 rows. The cluster is ``ray.cluster_utils.Cluster`` with ``--nodes``
nodes of ``--cpus`` CPUs each on this machine (so the nodes share its cores: on a 2-core
machine the add pass cannot run more than twice as fast, whatever the node count). The
sharded build makes ``--shards`` shards (default: two per cluster CPU). Writes
``benchmarks/results/sharded_index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import save_results  # noqa: E402
from incremental_index import fresh_recall, timed, write  # noqa: E402
from search import clustered  # noqa: E402

from embedkit.index.build import build_index  # noqa: E402
from embedkit.index.load import load_index  # noqa: E402
from embedkit.index.metric import prepare_vectors  # noqa: E402

PART_ROWS = 100_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--kind", default="ivf")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each simulated node")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--on-disk", action="store_true", help="merge into lists on disk")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default="sharded_index")
    return parser.parse_args(argv)


def start_cluster(nodes: int, cpus: int):
    """A simulated cluster in a private Ray temp folder (no other driver joins it)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ekbench", dir="/tmp")
    node = {"num_cpus": cpus, "object_store_memory": 1 << 30, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for n in range(2, nodes + 1):
        cluster.add_node(**node, resources={f"node{n}": 1})
    cluster.wait_for_nodes()
    return cluster


#: the sharded build's driver: a process of its own that joins the cluster by address,
#: as on a real cluster (and as tests/pipeline/test_ray_multinode.py runs it)
DRIVER = r"""
import json, sys, time
from embedkit.index.build import build_index
path, kind, shards, on_disk, address = sys.argv[1:6]
start = time.perf_counter()
build_index(path, kind=kind, engine="ray", shards=int(shards) if shards != "None" else None,
            on_disk=on_disk == "1", ray_address=address, progress=False, gpu=False)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def drive(path: Path, args: argparse.Namespace, address: str) -> float:
    """Seconds the sharded build took, end to end (its index saved in ``path``)."""
    argv = [sys.executable, "-c", DRIVER, str(path), args.kind, str(args.shards),
            "1" if args.on_disk else "0", address]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # as the multi-node test
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"the sharded build failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def run(args: argparse.Namespace, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    data = clustered(args.rows + args.queries, args.dim, args.clusters, rng)
    base, queries = data[: args.rows], data[args.rows :]
    path = folder / "lat"
    for start in range(0, args.rows, PART_ROWS):
        write(path, base[start : start + PART_ROWS], start, args.dim)
    print(f"{args.rows:,} x {args.dim} written in parts of {PART_ROWS:,}", flush=True)
    options = {"kind": args.kind, "progress": False, "save": False, "gpu": False}
    single, single_s = timed(lambda: build_index(path, on_disk=args.on_disk, **options))
    print(f"single process: {single.info.factory} in {single_s:.1f}s", flush=True)
    cluster = start_cluster(args.nodes, args.cpus)
    try:
        sharded_s = drive(path, args, cluster.address)
    finally:
        cluster.shutdown()
        shutil.rmtree(os.environ.pop("RAY_TMPDIR"), ignore_errors=True)
    sharded = load_index(path)
    record = sharded.info.sharding
    print(
        f"sharded on {args.nodes} nodes: {sharded_s:.1f}s ({record['shards']} shards, "
        f"add {record['add_seconds']}s, merge {record['merge_seconds']}s)",
        flush=True,
    )
    everything = prepare_vectors(base, "cosine", "x")
    fresh = prepare_vectors(queries, "cosine", "q")
    ids = [f"v{i}" for i in range(args.rows)]
    shard_rate = [s["rows"] / s["seconds"] for s in record["per_shard"] if s["seconds"] > 0]
    return {
        "factory": single.info.factory,
        "single_build_s": round(single_s, 2),
        "sharded_build_s": round(sharded_s, 2),
        "speedup": round(single_s / sharded_s, 3),
        "shards": record["shards"],
        "nodes_used": record["nodes"],
        "sharded_add_s": record["add_seconds"],
        "merge_s": record["merge_seconds"],
        "rows_per_s_per_worker": round(float(np.median(shard_rate)), 1),
        "recall_at_10_single": round(fresh_recall(single, fresh, everything, ids), 4),
        "recall_at_10_sharded": round(fresh_recall(sharded, fresh, everything, ids), 4),
        "same_ids": bool(np.array_equal(single.ids, sharded.ids)),
        "per_shard": record["per_shard"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args, Path(tmp))
    summary = {
        "rows": args.rows, "dim": args.dim, "clusters": args.clusters, "kind": args.kind,
        "nodes": args.nodes, "cpus_per_node": args.cpus, "on_disk": args.on_disk,
        "command": "python benchmarks/sharded_index.py " + " ".join(argv or sys.argv[1:]),
        **figures,
        "target": "recall@10 of the sharded build within 0.01 of the single-process build",
        "total_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    gap = abs(summary["recall_at_10_sharded"] - summary["recall_at_10_single"])
    print(
        f"single {summary['single_build_s']}s, sharded {summary['sharded_build_s']}s "
        f"(x{summary['speedup']}); {summary['rows_per_s_per_worker']:,} rows/s per worker; "
        f"recall@10 {summary['recall_at_10_single']} vs {summary['recall_at_10_sharded']} "
        f"(gap {gap:.4f})"
    )
    print(f"results -> {save_results(args.out, summary)}")
    return summary


if __name__ == "__main__":
    main()
