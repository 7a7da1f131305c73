"""Peak memory of embedding and of index building as the corpus grows 10x: it should stay
flat (target <= 1.2x).

Embed: N and 10*N images of the built-in corpus, each embedded in a fresh process; their
peak RSS (the main process; decode workers are reported separately).
Index build: latent datasets of R and 10*R clustered 128-d vectors (written by another
process), each indexed in a fresh process. The index itself must grow with the rows (it
holds them), so what must stay flat is the working memory of the build: peak RSS minus
the size of the index it built (its saved file), compared between R and 10*R.
Usage: python benchmarks/memory.py [--n 500] [--backbone pixels] [--index-rows 50000]
                                   [--index-kinds ivf,ivfpq,auto]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import save_results

CHILD = """
import json, resource, sys
import embedkit
result = embedkit.embed(sys.argv[1], sys.argv[2], sys.argv[3], progress=False,
                        backbone_options=json.loads(sys.argv[4]))
print(json.dumps({"rows": result.embedded,
                  "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def peak(labels: Path, backbone: str, options: dict, out: Path) -> dict:
    return run_child(CHILD, str(labels), backbone, str(out), json.dumps(options))


BUILD = """
import json, resource, sys
import embedkit
loaded = embedkit.build_index(sys.argv[1], kind=sys.argv[2], progress=False)
print(json.dumps({"factory": loaded.info.factory,
                  "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WRITE = """
import sys
import numpy as np
import embedkit
rows, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
centres = rng.normal(size=(100, 128)).astype(np.float32)
noise = 0.5 * rng.normal(size=(rows, 128)).astype(np.float32)
vectors = centres[rng.integers(0, 100, rows)] + noise
embedkit.write_latents(path, [f"v{i}" for i in range(rows)], vectors,
                       embedkit.BackboneInfo("synthetic", dim=128))
"""


def run_child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"child failed ({' '.join(args)}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def index_memory(rows: int, kinds: list[str], tmp: Path) -> dict:
    """Peak RSS of building each kind over ``rows`` and ``10 * rows`` vectors."""
    out: dict = {"index_rows_small": rows, "index_rows_large": 10 * rows}
    for label, n in (("small", rows), ("large", 10 * rows)):
        run_child(WRITE, str(n), str(tmp / f"vec-{label}"))
    for kind in kinds:
        for label in ("small", "large"):
            folder = tmp / f"vec-{label}"
            got = run_child(BUILD, str(folder), kind)
            index_mb = sum(f.stat().st_size for f in (folder / "index").glob("*.faiss")) / 2**20
            out[f"{kind}_{label}"] = {
                "factory": got["factory"],
                "peak_mb": round(got["self_mb"], 1),
                "index_mb": round(index_mb, 1),
                "working_mb": round(got["self_mb"] - index_mb, 1),
            }
        small, large = out[f"{kind}_small"], out[f"{kind}_large"]
        out[f"{kind}_working_ratio_10x"] = round(large["working_mb"] / small["working_mb"], 3)
        out[f"{kind}_peak_ratio_10x"] = round(large["peak_mb"] / small["peak_mb"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--backbone", default="pixels")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--index-rows", type=int, default=50_000, help="0: skip the index")
    parser.add_argument("--index-kinds", default="ivf,ivfpq,auto")
    args = parser.parse_args()
    from embedkit.images.corpus import make_shapes

    options = {"size": 32} if args.backbone == "pixels" else {"pretrained": False}
    with tempfile.TemporaryDirectory() as tmp:
        small = make_shapes(Path(tmp) / "small", n=args.n, size=args.size)
        large = make_shapes(Path(tmp) / "large", n=10 * args.n, size=args.size)
        a = peak(small, args.backbone, options, Path(tmp) / "lat-small")
        b = peak(large, args.backbone, options, Path(tmp) / "lat-large")
        index = {}
        if args.index_rows:
            index = index_memory(args.index_rows, args.index_kinds.split(","), Path(tmp))
    figures = {
        "backbone": args.backbone,
        "rows_small": a["rows"],
        "rows_large": b["rows"],
        "peak_mb_small": round(a["self_mb"], 1),
        "peak_mb_large": round(b["self_mb"], 1),
        "worker_peak_mb_small": round(a["workers_mb"], 1),
        "worker_peak_mb_large": round(b["workers_mb"], 1),
        "peak_ratio_10x": round(b["self_mb"] / a["self_mb"], 3),
        **index,
    }
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    print(f"results -> {save_results('memory', figures)}")


if __name__ == "__main__":
    main()
