"""Peak memory of embedding as the corpus grows 10x: it should stay flat (target <= 1.2x).

Embeds N and 10*N images of the built-in corpus in fresh processes and compares their
peak RSS (the main process; decode workers are reported separately).
Usage: python benchmarks/memory.py [--n 500] [--backbone pixels]
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
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(labels), backbone, str(out), json.dumps(options)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--backbone", default="pixels")
    parser.add_argument("--size", type=int, default=64, help="image side")
    args = parser.parse_args()
    from embedkit.images.corpus import make_shapes

    options = {"size": 32} if args.backbone == "pixels" else {"pretrained": False}
    with tempfile.TemporaryDirectory() as tmp:
        small = make_shapes(Path(tmp) / "small", n=args.n, size=args.size)
        large = make_shapes(Path(tmp) / "large", n=10 * args.n, size=args.size)
        a = peak(small, args.backbone, options, Path(tmp) / "lat-small")
        b = peak(large, args.backbone, options, Path(tmp) / "lat-large")
    figures = {
        "backbone": args.backbone,
        "rows_small": a["rows"],
        "rows_large": b["rows"],
        "peak_mb_small": round(a["self_mb"], 1),
        "peak_mb_large": round(b["self_mb"], 1),
        "worker_peak_mb_small": round(a["workers_mb"], 1),
        "worker_peak_mb_large": round(b["workers_mb"], 1),
        "peak_ratio_10x": round(b["self_mb"] / a["self_mb"], 3),
    }
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    print(f"results -> {save_results('memory', figures)}")


if __name__ == "__main__":
    main()
