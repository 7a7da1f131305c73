"""Helpers shared by the benchmark scripts: machine description, sample images, result files."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def make_images(
    folder: Path, n: int, size: int = 256, seed: int = 0, height: int | None = None
) -> list[Path]:
    """Photo-like JPEGs (smooth gradients plus noise), so decoding costs what it does in
    life: ``size`` x ``size``, or ``size`` wide and ``height`` high."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : height or size, 0:size] / size
    paths = []
    for i in range(n):
        path = folder / f"img_{i:05d}.jpg"
        if not path.exists():
            base = np.stack(
                [
                    np.sin(xx * rng.uniform(1, 8) + rng.uniform(0, 6)),
                    np.cos(yy * rng.uniform(1, 8) + rng.uniform(0, 6)),
                    np.sin((xx + yy) * rng.uniform(1, 8)),
                ],
                axis=-1,
            )
            noisy = (base * 0.5 + 0.5) * 220 + rng.normal(0, 12, base.shape)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def save_results(name: str, data: dict) -> Path:
    """Write ``results/<name>.json`` atomically and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    os.replace(tmp, path)
    return path
