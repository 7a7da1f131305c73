"""The GPU check (benchmarks/gpu_check.py, docs/gpu.md): its ``--smoke`` run on the CPU
writes every figure, marks the GPU-only ones "skipped: no GPU", and never touches
benchmarks/results when given ``--out``; without a GPU and without ``--smoke`` it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SKIPPED = "skipped: no GPU"
MEASURED_ON_CPU = [
    "raw_img_s", "pipeline_img_s", "pipeline_all_cores_img_s", "naive_img_s",
    "naive_batched_img_s", "pipeline_vs_raw", "pipeline_vs_naive", "pipeline_vs_naive_batched",
    "faiss_cpu_build_s", "faiss_cpu_qps", "faiss_cpu_recall_at_10", "vae_cpu_epoch_s",
]  # fmt: skip
GPU_ONLY = [
    "gpu_name", "faiss_gpu_build_s", "faiss_gpu_vs_cpu_build", "faiss_gpu_qps",
    "faiss_gpu_vs_cpu_qps", "faiss_gpu_recall_at_10", "faiss_recall_diff", "vae_gpu_epoch_s",
    "vae_gpu_vs_cpu",
]  # fmt: skip
DESCRIBED = [
    "mode", "machine", "gpu_tests", "gpu_tests_seconds", "embed_backbone", "embed_images",
    "embed_batch_size", "embed_workers", "faiss_rows", "faiss_dim", "faiss_queries",
    "faiss_factory", "faiss_params", "vae_images", "vae_image_size", "vae_batch_size",
    "targets", "total_s",
]  # fmt: skip


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_smoke_run_writes_every_figure(tmp_path):
    results_dir = ROOT / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results_dir.glob("*.json")}
    out = tmp_path / "check" / "smoke.json"
    done = run("--smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    missing = [k for k in MEASURED_ON_CPU + GPU_ONLY + DESCRIBED if k not in results]
    assert not missing, f"figures missing from the JSON: {missing}"
    for key in MEASURED_ON_CPU:
        assert isinstance(results[key], (int, float)) and results[key] > 0, (key, results[key])
    assert all(results[key] == SKIPPED for key in GPU_ONLY)
    assert results["gpu_tests"].startswith(SKIPPED)  # `pytest -m gpu` ran, all skipped
    assert 0.5 <= results["faiss_cpu_recall_at_10"] <= 1
    assert set(results["targets"]) == {
        "pipeline_vs_raw >= 0.9",
        "pipeline_vs_naive >= 3.0",
        "faiss_recall_diff <= 0.01",
    }
    assert f"faiss_gpu_qps: {SKIPPED}" in done.stdout
    after = {p.name: p.stat().st_mtime_ns for p in results_dir.glob("*.json")}
    assert after == before  # --out: benchmarks/results is left alone


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_without_a_gpu_it_asks_for_smoke():
    done = run(timeout=60)
    assert done.returncode != 0
    message = done.stderr.strip()
    assert "\n" not in message and "--smoke" in message and "no CUDA GPU" in message
