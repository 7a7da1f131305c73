#!/usr/bin/env bash
# The GPU check (docs/gpu.md): `pytest -m gpu`, then GPU-vs-CPU figures measured in the
# same run, written to benchmarks/results/gpu.json. Under 8 minutes on one big GPU.
# Arguments go to benchmarks/gpu_check.py: --smoke (CPU, tiny sizes), --out FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
command -v "$python" >/dev/null || python=python3
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_check.py "$@"
