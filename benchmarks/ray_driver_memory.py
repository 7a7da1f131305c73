"""The Ray driver's peak memory as the corpus grows 10x: parts written by the workers
(``writes="workers"``, the default) vs every vector sent to the driver's writer
(``writes="driver"``, the path before distributed writes), in the same run.

One local Ray (``--cpus`` CPUs, started once here, on 127.0.0.1, in a private temp
folder, warmed up by a small run) serves every run. Each run is a fresh driver process
that joins it and embeds ``--n`` or ``10 * --n`` small PNGs with the ``pixels`` backbone
at ``--size`` (dim 3·size², so the vectors dominate: 12 KiB each at size 32). Reported
per run: the driver's RSS before embedding (imports and Ray joined), its peak RSS
(``ru_maxrss``), and the peaks of its anonymous and shared (object store pages it
mapped) memory, sampled every 20 ms. Target: the workers' peak at 10·N within 1.2x of
its peak at N.

Usage: python benchmarks/ray_driver_memory.py [--n 5000] [--size 32] [--cpus 2]
Writes ``benchmarks/results/ray_driver_memory.json``.
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
from _common import save_results
from PIL import Image

CHILD = r"""
import json, os, resource, sys, threading, time
import ray
from embedkit.pipeline.ray_engine import embed_with_ray

def status() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssShmem")}

peaks = {"RssAnon": 0.0, "RssShmem": 0.0}
stop = threading.Event()
def sample() -> None:
    while not stop.wait(0.02):
        now = status()
        for key in peaks:
            peaks[key] = max(peaks[key], now[key])

address, source, out, size, writes = sys.argv[1:6]
ray.init(address=address, log_to_driver=False, configure_logging=False)
import embedkit_pixels.backbone, pyarrow.parquet  # what the run imports anyway
before = status()["VmRSS"]
threading.Thread(target=sample, daemon=True).start()
result = embed_with_ray(source, "pixels", out, writes=writes, batch_size=64, progress=False,
                        backbone_options={"size": int(size)})
stop.set()
print(json.dumps({
    "embedded": result.embedded, "seconds": round(result.seconds, 1),
    "img_s": round(result.images_per_second, 1), "before_mib": round(before, 1),
    "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "peak_anon_mib": round(peaks["RssAnon"], 1), "peak_shmem_mib": round(peaks["RssShmem"], 1),
    "nodes_writing": len(result.rows_by_node)}))
"""


def make_pngs(folder: Path, n: int) -> Path:
    """``n`` 16x16 random PNGs (cheap to decode: the vectors, not decoding, dominate)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"img_{i:06d}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return folder


def one_run(address: str, images: Path, size: int, writes: str, env: dict) -> dict:
    """A fresh driver process embedding ``images``; its figures."""
    out = Path(tempfile.mkdtemp(prefix="ek-driver-mem-"))
    try:
        argv = [sys.executable, "-c", CHILD, address, str(images), str(out / "lat"), str(size)]
        done = subprocess.run([*argv, writes], capture_output=True, text=True, env=env)
        if done.returncode:
            sys.exit(f"driver failed ({writes}, {images}):\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="images of the small run (x10 large)")
    parser.add_argument("--size", type=int, default=32, help="pixels size option (dim 3*size^2)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()
    ray_temp = tempfile.mkdtemp(prefix="ekbench", dir="/tmp")  # short: Ray's socket paths
    # Ray on 127.0.0.1 only (the drivers then resolve it as loopback too); a private temp
    # folder, so no other ray.init() on this machine joins this Ray
    os.environ |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_temp}
    import ray

    base = Path(tempfile.gettempdir()) / "embedkit-bench-pngs-16px"
    sizes = {"small": args.n, "large": 10 * args.n}
    folders = {label: make_pngs(base / str(n), n) for label, n in sizes.items()}
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ)
    figures: dict = {
        "images": sizes,
        "pixels_size": args.size,
        "dim": 3 * args.size**2,
        "vectors_mib": {k: round(n * 3 * args.size**2 * 4 / 2**20, 1) for k, n in sizes.items()},
        "ray_cpus": args.cpus,
        "ray_version": ray.__version__,
        "ray_init_s": round(time.perf_counter() - started, 1),
    }
    try:
        # the first run also starts the Ray's worker processes: once here, not counted
        warm_up = one_run(address, make_pngs(base / "64", 64), args.size, "workers", env)
        figures["warm_up_s"] = warm_up["seconds"]
        for writes in ("driver", "workers"):
            runs = {}
            for label, folder in folders.items():
                runs[label] = one_run(address, folder, args.size, writes, env)
                print(f"{writes:>7} writes, {sizes[label]:>7,} images: {runs[label]}", flush=True)
            runs["peak_ratio"] = round(runs["large"]["peak_mib"] / runs["small"]["peak_mib"], 3)
            runs["peak_growth_mib"] = round(runs["large"]["peak_mib"] - runs["small"]["peak_mib"])
            print(
                f"{writes:>7} writes: peak x{runs['peak_ratio']} (+{runs['peak_growth_mib']} MiB)"
            )
            figures[writes] = runs
    finally:
        ray.shutdown()
        shutil.rmtree(ray_temp, ignore_errors=True)
    print(f"results -> {save_results('ray_driver_memory', figures)}")


if __name__ == "__main__":
    main()
