"""Scale-out figures: embedding throughput local vs Ray, and index-build memory.

(1) The same folder of photo-like JPEGs (default 2000 at 64 px) embedded by
``embedkit.embed(engine="local")`` and ``engine="ray"`` (parts written by the workers,
and again with ``EMBEDKIT_RAY_WRITES=driver``; a local Ray on this machine's
cores, started once beforehand and warmed up by one small run; its start-up time is
reported apart), with the ``pixels``
backbone and ``timm/resnet18`` (``pretrained=False``: random weights, so no download; each
Ray actor builds its own) at batch 32. images/s of each and the ratio ray / local. Each
Ray run includes starting its actor pool (a process importing torch, a few seconds).

(2) Peak RSS of building an IVF index over ``--index-rows`` x ``--index-dim`` latents (ids too),
each in a fresh process: ``build_index`` (streams batches from the Parquet parts) vs the
load-everything way (``to_numpy()`` of the whole set, then train + add), minus the RSS of
the same process before the build (imports done).

Usage: python benchmarks/ray_throughput.py [--n 2000] [--index-rows 500000,2000000]
       [--skip-embed] [--skip-index]     (a skipped part keeps its figures from the last run)
Writes ``benchmarks/results/ray_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, make_images, save_results

import embedkit

HERE = Path(__file__).resolve().parent

MEMORY_CHILD = r"""
import json, resource, sys
import faiss, numpy as np
from embedkit.index.build import build_index
from embedkit.store.dataset import open_latents

def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

path, mode, nlist = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = open_latents(path)
before = rss_mib()
if mode == "streamed":
    index = build_index(ds, kind=f"IVF{nlist},Flat", progress=False, save=False).index
else:  # what a user without streaming writes: everything in memory at once
    ids = ds.ids()
    x = np.ascontiguousarray(ds.to_numpy(), dtype=np.float32)
    faiss.normalize_L2(x)
    index = faiss.index_factory(ds.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = x[np.random.default_rng(0).choice(len(x), min(len(x), 64 * nlist), replace=False)]
    index.train(sample)
    index.add(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"before_mib": round(before, 1), "peak_mib": round(peak, 1),
                  "ntotal": int(index.ntotal)}))
"""


def throughput(
    folder: Path | list[Path], backbone: str, engine: str, batch_size: int, writes: str = "workers"
) -> dict:
    """images/s of one run; ``writes``: who writes the Ray engine's parts."""
    options = {"pretrained": False} if backbone.startswith("timm/") else {}
    os.environ["EMBEDKIT_RAY_WRITES"] = writes
    with tempfile.TemporaryDirectory() as out:
        result = embedkit.embed(
            folder,
            backbone,
            out,
            batch_size=batch_size,
            progress=False,
            backbone_options=options,
            engine=engine,
        )
    return {"img_s": round(result.images_per_second, 1), "seconds": round(result.seconds, 2)}


def embedding(args: argparse.Namespace) -> dict:
    import ray

    folder = Path(tempfile.gettempdir()) / f"embedkit-bench-images-{args.size}px"
    make_images(folder, args.n, size=args.size)
    started = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray_start = time.perf_counter() - started
    figures: dict = {
        "images": args.n,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "ray_init_s": round(ray_start, 2),
        "ray_version": ray.__version__,
    }
    try:
        # a first Ray run also starts the cluster's worker processes: done once here, not
        # counted, so neither timed Ray run pays for it
        warm_up = sorted(folder.glob("*.jpg"))[: args.batch_size]
        figures["warm_up_s"] = throughput(warm_up, "pixels", "ray", args.batch_size)["seconds"]
        for backbone in args.backbones.split(","):
            local = throughput(folder, backbone, "local", args.batch_size)
            on_ray = throughput(folder, backbone, "ray", args.batch_size)
            via_driver = throughput(folder, backbone, "ray", args.batch_size, writes="driver")
            figures[backbone] = {
                "local": local,
                "ray": on_ray,
                "ray_driver_writes": via_driver,
                "ray_vs_local": round(on_ray["img_s"] / local["img_s"], 3),
            }
            print(
                f"{backbone:>16}: local {local['img_s']:8.1f} img/s   ray {on_ray['img_s']:8.1f} "
                f"img/s   ray/local {figures[backbone]['ray_vs_local']:.3f}   ray, driver writes "
                f"{via_driver['img_s']:8.1f} img/s",
                flush=True,
            )
    finally:
        ray.shutdown()
    return figures


def index_memory(rows: int, dim: int, nlist: int) -> dict:
    import numpy as np

    from embedkit.plugins.info import BackboneInfo
    from embedkit.store.writer import LatentWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lat"
        rng = np.random.default_rng(0)
        with LatentWriter(path, BackboneInfo("bench", dim=dim)) as writer:
            for start in range(0, rows, 65_536):
                n = min(65_536, rows - start)
                ids = [str(i) for i in range(start, start + n)]
                writer.write(ids, [""] * n, rng.normal(size=(n, dim)).astype(np.float32))
        figures: dict = {
            "rows": rows,
            "dim": dim,
            "factory": f"IVF{nlist},Flat",
            "vectors_mib": round(rows * dim * 4 / 2**20, 1),
        }
        for mode in ("streamed", "loaded"):
            done = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, str(path), mode, str(nlist)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())},
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["build_mib"] = round(result["peak_mib"] - result["before_mib"], 1)
            figures[mode] = result
            print(
                f"index memory {rows:,} x {dim} {mode:>8}: +{result['build_mib']:.0f} MiB peak",
                flush=True,
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbones", default="pixels,timm/resnet18")
    parser.add_argument("--index-rows", default="500000,2000000", help="comma-separated")
    parser.add_argument("--index-dim", type=int, default=64)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    args = parser.parse_args()
    previous = RESULTS / "ray_throughput.json"  # a skipped part keeps its last figures
    figures: dict = json.loads(previous.read_text()) if previous.is_file() else {}
    figures.pop("machine", None)
    if not args.skip_embed:
        figures["embed"] = embedding(args)
    if not args.skip_index:
        figures["index_memory"] = [
            index_memory(int(rows), args.index_dim, args.nlist)
            for rows in args.index_rows.split(",")
        ]
    print(f"results -> {save_results('ray_throughput', figures)}")


if __name__ == "__main__":
    main()
