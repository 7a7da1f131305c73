"""Reading latents into numpy: embedkit's Parquet dataset vs the same bytes in a .npy file.

Writes N x D float32 vectors both ways, then times (best of 5, page cache warm):
  (a) numpy  np.load of a .npy file holding the same array (the baseline)
  (b) parquet open_latents(dir).to_numpy()
and prints GB/s for each and the ratio (b)/(a).
Usage: python benchmarks/read_latents.py [--rows 1000000] [--dim 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save_results

import embedkit


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    vectors = np.random.default_rng(0).standard_normal((args.rows, args.dim), dtype=np.float32)
    ids = np.char.add("img_", np.arange(args.rows).astype(str)).astype(object)
    gigabytes = vectors.nbytes / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "vectors.npy"
        np.save(npy, vectors)
        latents = Path(tmp) / "latents"
        embedkit.write_latents(latents, ids, vectors, embedkit.BackboneInfo("bench", args.dim))
        ds = embedkit.open_latents(latents)
        assert np.array_equal(ds.to_numpy(), vectors)
        numpy_s = best_of(lambda: np.load(npy))
        parquet_s = best_of(lambda: embedkit.open_latents(latents).to_numpy())
        ids_s = best_of(lambda: embedkit.open_latents(latents).ids())
    figures = {
        "rows": args.rows,
        "dim": args.dim,
        "gigabytes": round(gigabytes, 3),
        "npy_gb_s": round(gigabytes / numpy_s, 2),
        "parquet_gb_s": round(gigabytes / parquet_s, 2),
        "parquet_vs_npy": round(numpy_s / parquet_s, 3),
        "ids_seconds": round(ids_s, 3),
    }
    for key, value in figures.items():
        print(f"{key:>16}: {value}")
    print(f"results -> {save_results('read_latents', figures)}")


if __name__ == "__main__":
    main()
