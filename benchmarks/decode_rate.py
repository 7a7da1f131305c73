"""Decode feed rate: how fast one core turns JPEG files into a backbone's input tensors,
embedkit's decoder against the naive loop, same images, same run.

500 photo-like 800x600 JPEGs into timm/resnet18's evaluation transform (resize 235,
crop 224, normalize):
  (a) naive     Image.open(path).convert("RGB") -> the model's timm eval transform
                (resize, crop, to-tensor, normalize), one by one
  (b) embedkit  the pipeline's worker item: load_image at the backbone's decode_size
                (JPEG DCT scaling when the file is far larger) -> backbone.preprocess
                (resize and crop fused, uint8; normalising is left to the model's process)
Both run in this one process, so the figure is images/s per core: the ceiling a GPU can
be fed at by each decode worker. Target (issue 14): (b) / (a) >= 2.
Usage: python benchmarks/decode_rate.py [--n 500] [--backbone timm/resnet18]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _common import make_images, save_results
from PIL import Image

import embedkit
from embedkit.pipeline.decode import ImageDataset


def naive(backbone, paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        backbone.transform(Image.open(path).convert("RGB"))
    return len(paths) / (time.perf_counter() - started)


def pipeline_items(backbone, paths: list[Path]) -> float:
    items = ImageDataset([str(p) for p in paths], backbone.preprocess, backbone.decode_size)
    started = time.perf_counter()
    for i in range(len(items)):
        assert items[i].error is None
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--backbone", default="timm/resnet18")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core, as one decode worker has
    folder = Path(tempfile.gettempdir()) / "embedkit-bench-800x600"
    paths = make_images(folder, args.n, size=800, height=600)
    options = {"pretrained": False} if args.backbone.startswith("timm/") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = embedkit.load_backbone(args.backbone, device="cpu", **options)
    naive(backbone, paths[:20])  # warm the page cache
    runs: dict[str, list[float]] = {"naive": [], "embedkit": []}
    for _ in range(args.repeats):  # interleaved, best of
        runs["naive"].append(naive(backbone, paths))
        runs["embedkit"].append(pipeline_items(backbone, paths))
    slow, fast = max(runs["naive"]), max(runs["embedkit"])
    figures = {
        "backbone": args.backbone,
        "images": args.n,
        "image_size": "800x600 JPEG",
        "decode_size": backbone.decode_size,
        "naive_img_s_per_core": round(slow, 1),
        "embedkit_img_s_per_core": round(fast, 1),
        "embedkit_vs_naive": round(fast / slow, 3),
        "target": 2.0,
    }
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    print(f"results -> {save_results('decode_rate', figures)}")


if __name__ == "__main__":
    main()
