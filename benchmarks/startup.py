"""CLI start-up: how long `embedkit --help` and `embedkit backbones` take, end to end.

Each command runs in a fresh process (the real console script), N times; the median
wall time is reported beside the baselines measured in the same run: a bare
interpreter (`python -c pass`) and `import torch` (what every command paid before
imports were made lazy). `python -X importtime` then names the slowest imports of
`embedkit --help`. Targets (issue 12): --help < 0.5 s, backbones < 1.5 s.
Usage: python benchmarks/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import save_results

PYTHON = sys.executable
SCRIPT = str(Path(PYTHON).with_name("embedkit"))
COMMANDS = {
    "python_bare": [PYTHON, "-c", "pass"],
    "import_torch": [PYTHON, "-c", "import torch"],
    "import_embedkit": [PYTHON, "-c", "import embedkit"],
    "embedkit_help": [SCRIPT, "--help"],
    "embedkit_version": [SCRIPT, "--version"],
    "embedkit_backbones": [SCRIPT, "backbones"],
    "embedkit_embed_help": [SCRIPT, "embed", "--help"],
}
TARGETS = {"embedkit_help": 0.5, "embedkit_backbones": 1.5}


def median_seconds(argv: list[str], repeats: int) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def slowest_imports(argv: list[str], top: int = 8) -> list[tuple[str, float]]:
    """The imports (at any depth) with the largest cumulative time, ``-X importtime``."""
    code = f"import sys; sys.argv = {argv!r}; from embedkit.cli import main; main()"
    err = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line[12:].split("|")
            rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    figures = {
        name: round(median_seconds(argv, args.repeats), 3) for name, argv in COMMANDS.items()
    }
    for name, seconds in figures.items():
        target = TARGETS.get(name)
        verdict = (
            f"  (target < {target} s: {'met' if seconds < target else 'MISSED'})" if target else ""
        )
        print(f"{name:<22} {seconds:6.3f} s{verdict}")
    imports = slowest_imports(["embedkit", "--help"])
    print("slowest imports of `embedkit --help` (cumulative):")
    for name, seconds in imports:
        print(f"  {name:<40} {seconds * 1000:7.1f} ms")
    save_results(
        "startup",
        {
            "repeats": args.repeats,
            **{f"{name}_s": s for name, s in figures.items()},
            "help_target_met": figures["embedkit_help"] < TARGETS["embedkit_help"],
            "backbones_target_met": figures["embedkit_backbones"] < TARGETS["embedkit_backbones"],
            "help_slowest_imports_ms": {n: round(s * 1000, 1) for n, s in imports},
        },
    )


if __name__ == "__main__":
    main()
