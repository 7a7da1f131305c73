"""Reading latents into numpy: embedkit's Parquet dataset vs the same bytes in a .npy file.

Writes N x D float32 vectors both ways (the parts as ``write_latents`` writes them; with
--pipeline-layout as ``embedkit embed`` does: 100k-row parts of 16k-row row groups),
reads every file once (page cache warm), then times, all in the same run:

  npy         np.load of a .npy file holding the same array: the baseline
  first/later open_latents(dir).to_numpy(), the default (cache="auto"): plain parts are
              read straight from their pages and no cache is written, so the first read
              and later ones do the same work
  cache_*     open_latents(dir, cache=True): the first read writes the vector cache
              (best of 3, the cache deleted before each); later reads return a read-only
              memory map of it (``_touch``: and then read one value from every 4 KiB page)
  arrow       the Arrow decode to_numpy() used before (pyarrow.parquet.read_table)
  legacy_*    the same rows with a snappy, dictionary-encoded embedding column (embedkit
              before plain vectors, or another writer): Arrow must decode, so the default
              writes the cache on the first read (best of 2) and maps it later
  vectors_of  100 random ids; filter: one label of 100 (~1% of rows); each also the way
              it was read before (an Arrow scan with the filter), once; ids()

Later reads are the best of 5. Each figure is GB/s of vectors and its ratio to np.load;
an np.load is timed before every timed read and the baseline is the best of all of them,
so a load change on a shared machine hits both sides (figures stay noisy: np.load itself
varies ~2x between runs on a busy 2-core box).
Usage: python benchmarks/read_latents.py [--rows 1000000] [--dim 128] [--pipeline-layout]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _common import save_results

import embedkit
from embedkit.store.format import EMBEDDING, vectors_from_column
from embedkit.store.writer import LatentWriter

#: every np.load timed during the run: the baseline is the best of them
BASELINE: dict[str, object] = {"npy": None, "times": []}


def best_of(fn: Callable[[], object], repeats: int = 5, before: Callable | None = None) -> float:
    """The best time of ``repeats`` calls, each after an np.load of the baseline file
    (when there is one) and ``before()``."""
    times = []
    for _ in range(repeats):
        if BASELINE["npy"] is not None:
            started = time.perf_counter()
            np.load(BASELINE["npy"])
            BASELINE["times"].append(time.perf_counter() - started)
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def warm(folder: Path) -> None:
    """Read every file under ``folder`` once, so reads below come from the page cache."""
    buffer = bytearray(64 << 20)
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass


def age(folder: Path) -> None:
    """Date the parts a minute back: a cache is only written when newer than every part."""
    when = time.time_ns() - 60 * 10**9
    for part in folder.glob("part-*.parquet"):
        os.utime(part, ns=(when, when))


def write(folder: Path, ids, vectors, labels, pipeline_layout: bool) -> None:
    info = embedkit.BackboneInfo("bench", vectors.shape[1])
    if not pipeline_layout:
        embedkit.write_latents(folder, ids, vectors, info, columns={"label": labels})
        return
    with LatentWriter(folder, info) as writer:  # 100k-row parts, ~16k-row row groups
        for start in range(0, len(ids), 4096):
            stop = start + 4096
            writer.write(ids[start:stop], [""] * len(ids[start:stop]), vectors[start:stop],
                         {"label": labels[start:stop]})  # fmt: skip


def legacy_copy(latents: Path, folder: Path) -> Path:
    """The parts rewritten with pyarrow's defaults (snappy, dictionary) for every column."""
    folder.mkdir()
    for part in sorted(latents.glob("part-*.parquet")):
        pq.write_table(pq.read_table(part), folder / part.name)
    age(folder)
    return folder


def time_default(latents: Path) -> dict[str, float]:
    first_s = best_of(lambda: embedkit.open_latents(latents).to_numpy(), 1)
    later_s = best_of(lambda: embedkit.open_latents(latents).to_numpy())
    return {"first": first_s, "later": later_s}


def time_cache(latents: Path, first_repeats: int = 3, **open_options) -> dict[str, float]:
    """First read (the cache deleted before each), later reads, later reads touching pages."""
    folder = latents / ".embedkit" / "cache"

    def read():
        return embedkit.open_latents(latents, **open_options).to_numpy()

    def touch():
        x = read()
        return x.reshape(-1)[:: 4096 // x.itemsize].sum()

    first_s = best_of(read, first_repeats, before=lambda: shutil.rmtree(folder, True))
    assert list(folder.glob("vectors-*.npy")), "the first read wrote no cache"
    return {"first": first_s, "later": best_of(read), "later_touch": best_of(touch)}


def time_arrow(latents: Path, dim: int) -> float:
    parts = sorted(latents.glob("part-*.parquet"))

    def read():
        column = pq.read_table(parts, columns=[EMBEDDING]).column(EMBEDDING)
        return vectors_from_column(column, dim)

    return best_of(read, 3)


def time_selections(latents: Path, ids, rng) -> dict[str, float]:
    ds = embedkit.open_latents(latents)
    wanted = [str(i) for i in rng.choice(ids, 100, replace=False)]
    arrow_vectors_of = best_of(
        lambda: ds.dataset.to_table(columns=["id", EMBEDDING], filter=pc.field("id").isin(wanted)),
        1,
    )
    arrow_filter = best_of(
        lambda: ds.dataset.to_table(columns=[EMBEDDING], filter=pc.field("label") == 7), 1
    )
    return {
        "vectors_of_100_seconds": best_of(lambda: ds.vectors_of(wanted), 3),
        "vectors_of_100_arrow_seconds": arrow_vectors_of,
        "filter_1pct_seconds": best_of(lambda: ds.filter(label=7).to_numpy(), 3),
        "filter_1pct_arrow_seconds": arrow_filter,
        "ids_seconds": best_of(lambda: ds.ids(), 3),
    }


def rate(gigabytes: float, numpy_s: float, name: str, seconds: float) -> dict[str, float]:
    return {
        f"{name}_gb_s": round(gigabytes / seconds, 2),
        f"{name}_vs_npy": round(numpy_s / seconds, 3),
    }


def measure(tmp: Path, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    ids = np.char.add("img_", np.arange(args.rows).astype(str)).astype(object)
    labels = rng.integers(0, 100, args.rows)
    gigabytes = vectors.nbytes / 1e9
    npy, latents = tmp / "vectors.npy", tmp / "latents"
    np.save(npy, vectors)
    write(latents, ids, vectors, labels, args.pipeline_layout)
    legacy = legacy_copy(latents, tmp / "legacy")
    age(latents)
    assert np.array_equal(embedkit.open_latents(latents, cache=False).to_numpy(), vectors)
    warm(tmp)
    BASELINE["npy"] = npy
    default = time_default(latents)
    cached = time_cache(latents, cache=True)
    arrow_s = time_arrow(latents, args.dim)
    old = time_cache(legacy, first_repeats=2)
    BASELINE["npy"] = None
    numpy_s = min(BASELINE["times"])
    assert np.array_equal(embedkit.open_latents(legacy).to_numpy(), vectors)
    figures = {
        "rows": args.rows,
        "dim": args.dim,
        "layout": "pipeline" if args.pipeline_layout else "write_latents",
        "gigabytes": round(gigabytes, 3),
        "npy_gb_s": round(gigabytes / numpy_s, 2),
    }
    for name, seconds in [
        *default.items(),
        *((f"cache_{k}", v) for k, v in cached.items()),
        ("arrow", arrow_s),
        *((f"legacy_{k}", v) for k, v in old.items() if k != "later_touch"),
    ]:
        figures |= rate(gigabytes, numpy_s, name, seconds)
    figures |= {"parquet_gb_s": figures["later_gb_s"], "parquet_vs_npy": figures["later_vs_npy"]}
    return figures | {k: round(v, 4) for k, v in time_selections(latents, ids, rng).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--pipeline-layout", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(Path(tmp), args)
    for key, value in figures.items():
        print(f"{key:>30}: {value}")
    name = "read_latents" + ("_pipeline" if args.pipeline_layout else "")
    print(f"results -> {save_results(name, figures)}")


if __name__ == "__main__":
    main()
