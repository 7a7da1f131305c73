"""Run every benchmark script, then collect results/*.json into latest.json and latest.md.

Usage: python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, machine

HERE = Path(__file__).parent
# script -> (arguments for `make bench`, arguments for --quick); sized so that the whole
# suite stays under ~15 minutes on a 2-core CPU (the 1M-row runs are separate commands,
# quoted in docs/performance.md)
SCRIPTS = {
    "startup.py": ([], ["--repeats", "3"]),
    "embed_scaling.py": ([], ["--large", "100000", "--repeats", "1"]),
    "embed_throughput.py": ([], ["--n", "64", "--repeats", "1"]),
    "embed_throughput.py --backbone pixels": (
        ["--backbone", "pixels", "--n", "2000"],
        ["--backbone", "pixels", "--n", "500", "--repeats", "1"],
    ),
    "decode_rate.py": (["--repeats", "3"], ["--n", "100", "--repeats", "1"]),
    "search.py": ([], ["--rows", "20000"]),
    "query_overhead.py": ([], ["--rows", "20000", "--calls", "50"]),
    "incremental_index.py": (["--rows", "200000"], ["--rows", "50000"]),
    "ray_driver_memory.py": (["--n", "5000"], ["--n", "500"]),
    "sharded_index.py": (["--rows", "200000"], ["--rows", "50000"]),
    "index_at_scale.py": ([], ["--rows", "2000", "--train", "65536"]),
    "filtered_search.py": (
        ["--rows", "200000"],
        ["--rows", "50000", "--singles", "50", "--sweep", "20,100"],
    ),
    "serve_latency.py": (
        ["--index", "ivf", "--item-rows", "1000000"],
        ["--rows", "5000", "--dim", "64", "--item-rows", "20000"],
    ),
    "curation.py": (["--rows", "200000"], ["--rows", "20000", "--baseline-rows", "5000"]),
    "read_latents.py": ([], ["--rows", "200000"]),
    "memory.py": ([], ["--n", "200", "--index-rows", "10000"]),
    "ray_throughput.py": (
        ["--n", "1000", "--index-rows", "500000"],
        ["--n", "300", "--index-rows", "100000", "--backbones", "pixels"],
    ),
}


def markdown(results: dict[str, dict]) -> str:
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for name, figures in results.items():
        for key, value in figures.items():
            if key != "machine" and not isinstance(value, (dict, list)):
                lines.append(f"| {name} | {key} | {value} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild latest.*")
    args = parser.parse_args()
    status = 0
    for script, (full_args, quick_args) in ({} if args.collect_only else SCRIPTS).items():
        script = script.split()[0]  # keys may carry a label after the file name
        if not (HERE / script).exists():
            continue
        started = time.monotonic()
        print(f"== {script}", flush=True)
        code = subprocess.call(
            [sys.executable, str(HERE / script), *(quick_args if args.quick else full_args)],
            cwd=HERE,
        )
        print(f"== {script}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        status = status or code
    results = {
        p.stem: json.loads(p.read_text())
        for p in sorted(RESULTS.glob("*.json"))
        if p.stem != "latest"
    }
    (RESULTS / "latest.json").write_text(json.dumps({"machine": machine(), **results}, indent=2))
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))
    sys.exit(status)


if __name__ == "__main__":
    main()
