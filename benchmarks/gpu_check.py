"""The GPU check: the ``gpu``-marked tests, then GPU figures as ratios measured in the same run.

  1. ``pytest -m gpu``
  2. ``embedkit.embed`` (local engine) vs raw ``backbone.encode`` on pre-decoded tensors, and
     vs a naive loop (open, convert, transform, model); timm/resnet50, random seeded
     weights, batch 256, 5,000 generated 500x375 JPEGs (decoding included)
  3. faiss IVF, GPU vs CPU, 1M x 256 clustered vectors: build time, q/s, recall@10 vs exact
  4. VAE training epoch time, GPU vs CPU (the plugin's ``train``)

Under 8 minutes on one big GPU with 16 cores; writes benchmarks/results/gpu.json. ``--smoke``
runs it all on the CPU at tiny sizes (< 1 minute); GPU-only figures read "skipped: no GPU".
Usage: benchmarks/gpu_check.sh [--smoke] [--out FILE]. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import timeit
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import _common
import faiss
import numpy as np
import torch
from _common import make_images, save_results
from PIL import Image
from search import clustered

import embedkit
from embedkit.errors import first_line
from embedkit.images.corpus import make_shapes
from embedkit.index.build import build_index
from embedkit.index.metric import METRICS, prepare_vectors
from embedkit.pipeline.steps import default_num_workers
from embedkit.plugins.info import BackboneInfo
from embedkit.store.dataset import open_latents
from embedkit.store.writer import write_latents

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = "skipped: no GPU"
# (figure, target, "min" or "max"): checked on a GPU run only
TARGETS = [
    ("pipeline_vs_raw", 0.9, "min"),
    ("pipeline_vs_naive", 3.0, "min"),
    ("faiss_recall_diff", 0.01, "max"),
]
FULL = {
    "images": 5000, "naive_images": 1000, "backbone": "timm/resnet50", "batch_size": 256,
    "naive_batch": 32, "rows": 1_000_000, "dim": 256, "clusters": 1000, "queries": 10_000,
    "vae_images": 10_000, "vae_size": 64, "vae_batch": 128, "vae_epochs": 2, "repeats": 2,
    "channels": None, "tests_timeout": 240, "tests": "tests",
}  # fmt: skip
SMOKE = {
    "images": 32, "naive_images": 16, "backbone": "pixels", "batch_size": 16,
    "naive_batch": 8, "rows": 20_000, "dim": 32, "clusters": 100, "queries": 500,
    "vae_images": 64, "vae_size": 32, "vae_batch": 16, "vae_epochs": 1, "repeats": 1,
    "channels": (8, 16, 32), "tests_timeout": 120, "tests": "tests/first_party/test_vae_gpu.py",
}  # fmt: skip
FIGURES = {
    "gpu_tests": ["gpu_tests", "gpu_tests_seconds"],
    "embed": [
        "embed_backbone", "embed_images", "embed_batch_size", "embed_workers", "raw_img_s",
        "pipeline_img_s", "pipeline_all_cores_img_s", "naive_img_s", "naive_batched_img_s",
        "pipeline_vs_raw", "pipeline_vs_naive", "pipeline_vs_naive_batched",
    ],
    "faiss": [
        "faiss_rows", "faiss_dim", "faiss_queries", "faiss_factory", "faiss_params",
        "faiss_cpu_build_s", "faiss_gpu_build_s", "faiss_gpu_vs_cpu_build",
        "faiss_cpu_qps", "faiss_gpu_qps", "faiss_gpu_vs_cpu_qps",
        "faiss_cpu_recall_at_10", "faiss_gpu_recall_at_10", "faiss_recall_diff",
    ],
    "vae": [
        "vae_images", "vae_image_size", "vae_batch_size", "vae_cpu_epoch_s", "vae_gpu_epoch_s",
        "vae_gpu_vs_cpu",
    ],
}  # fmt: skip


def ratio(a, b, digits: int = 3):
    """``a / b`` rounded; a side that was not measured passes its reason on."""
    for value in (a, b):
        if not isinstance(value, (int, float)):
            return value
    return round(a / b, digits) if b else "n/a: zero baseline"


def gpu_tests(size: dict) -> dict:
    """Run ``pytest -m gpu`` in a subprocess; its summary line (and status) is the figure.
    The smoke run collects one test file only (collecting them all takes ~10 s there)."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    cmd.append(size["tests"])
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=size["tests_timeout"]
        )
        output, code = (done.stdout + done.stderr).strip(), done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"timed out after {exc.timeout}s", -1
    if code != 0:
        print("\n".join(output.splitlines()[-40:]), file=sys.stderr)
    status = "FAILED" if code else ("passed" if torch.cuda.is_available() else SKIPPED)
    summary = output.splitlines()[-1].strip("= ") if output else "no output"
    seconds = round(time.perf_counter() - started, 1)
    return {"gpu_tests": f"{status} ({summary})", "gpu_tests_seconds": seconds}


# -- embedding ----------------------------------------------------------------------------


def chunked(folder: Path, n: int, chunk: int) -> list[tuple[Path, int, int]]:
    """``(subfolder, count, seed)`` per chunk of ``n`` files: the same files on any machine."""
    count = -(-n // chunk)
    return [(folder / f"chunk_{k:03d}", min(chunk, n - k * chunk), k) for k in range(count)]


def in_parallel(make, jobs: list[tuple[Path, int, int]], **options) -> list:
    """``make(subfolder, count, seed=seed, **options)`` per job; in forked processes when
    there are several (they do no CUDA work)."""
    if len(jobs) == 1:
        return [make(jobs[0][0], jobs[0][1], seed=jobs[0][2], **options)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1), mp_context=context) as pool:
        futures = [pool.submit(make, f, count, seed=k, **options) for f, count, k in jobs]
        return [future.result() for future in futures]


def jpegs(n: int) -> list[Path]:
    """``n`` photo-like 500x375 JPEGs, made once and kept in the temp folder."""
    jobs = chunked(Path(tempfile.gettempdir()) / "embedkit-gpu-check-500x375", n, 250)
    return [p for paths in in_parallel(make_images, jobs, size=500, height=375) for p in paths]


def user_transform(backbone):
    """What a user applies to a PIL image: the timm eval transform (resize, crop, to-tensor,
    normalize) where the backbone has one, else its preprocess finished to float."""
    transform = getattr(backbone, "transform", None)
    if transform is not None:
        return transform

    def finished(image: Image.Image) -> torch.Tensor:
        x = backbone.preprocess(image)
        return backbone.finish_preprocess(x[None])[0] if x.dtype == torch.uint8 else x

    return finished


def naive_loop(backbone, paths: list[Path], batch_size: int) -> float:
    """Images/s of the loop a user writes: open, convert, transform, model (fp32), in order."""
    transform, device = user_transform(backbone), backbone.device
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            images = [Image.open(p).convert("RGB") for p in paths[i : i + batch_size]]
            batch = torch.stack([transform(im) for im in images]).to(device)
            backbone.forward(batch).float().cpu()
    return len(paths) / (time.perf_counter() - started)


def pipeline(backbone, paths: list[Path], batch_size: int, workers: int | None) -> float:
    with tempfile.TemporaryDirectory() as out:  # a fresh dataset: nothing to resume
        result = embedkit.embed(
            [str(p) for p in paths], backbone, out, batch_size=batch_size,
            num_workers=workers, progress=False,
        )  # fmt: skip
    return result.images_per_second


def raw_batches(backbone, paths: list[Path], batch_size: int) -> list[torch.Tensor]:
    """The images decoded and preprocessed beforehand, stacked (and pinned on CUDA)."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL decodes without the GIL
        tensors = list(pool.map(lambda p: backbone.preprocess(embedkit.load_image(p)), paths))
    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    return [b.pin_memory() for b in batches] if backbone.device.type == "cuda" else batches


def embed_figures(size: dict) -> dict:
    """Pipeline vs raw encode vs naive loops, interleaved, best of ``repeats``."""
    paths, bs, repeats = jpegs(size["images"]), size["batch_size"], size["repeats"]
    options = {"pretrained": False} if size["backbone"].startswith("timm/") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: right for timing
        backbone = embedkit.load_backbone(size["backbone"], **options)
    batches = raw_batches(backbone, paths, bs)
    for batch in batches[:2]:  # warm-up at the measured shape (cuDNN/oneDNN pick kernels)
        backbone.encode(batch)
    naive_loop(backbone, paths[:2], 1)
    naive_loop(backbone, paths[: size["naive_batch"]], size["naive_batch"])
    raw, piped = float("inf"), 0.0
    for _ in range(repeats):  # interleaved: a busy moment hurts both alike
        raw = min(raw, timeit.timeit(lambda: [backbone.encode(b) for b in batches], number=1))
        piped = max(piped, pipeline(backbone, paths, bs, None))
    cores = os.cpu_count() or 1
    default_workers = default_num_workers()
    all_cores = pipeline(backbone, paths, bs, cores) if cores > default_workers else piped
    sample = paths[: size["naive_images"]]
    naive = naive_loop(backbone, sample, 1)
    naive_batched = naive_loop(backbone, sample, size["naive_batch"])
    return {
        "embed_backbone": f"{size['backbone']} on {backbone.device} ({backbone.precision})",
        "embed_images": len(paths),
        "embed_batch_size": bs,
        "embed_workers": f"{default_workers} (default); all cores: {cores}",
        "raw_img_s": round(len(paths) / raw, 1),
        "pipeline_img_s": round(piped, 1),
        "pipeline_all_cores_img_s": round(all_cores, 1),
        "naive_img_s": round(naive, 1),
        "naive_batched_img_s": round(naive_batched, 1),
        "pipeline_vs_raw": ratio(piped, len(paths) / raw),
        "pipeline_vs_naive": ratio(piped, naive),
        "pipeline_vs_naive_batched": ratio(piped, naive_batched),
    }


# -- faiss --------------------------------------------------------------------------------


def recall_at_10(built, queries: np.ndarray, truth: np.ndarray, params: dict) -> float:
    """Share of the exact 10 nearest rows that the index returns."""
    found = built.search(queries, 10, params)[1]
    rows = np.where(found >= 0, built.ids.astype(np.int64)[np.maximum(found, 0)], -1)
    return float((rows[:, :, None] == truth[:, None, :]).any(-1).mean())


def exact_top10(queries: np.ndarray, base: np.ndarray, gpu: bool) -> np.ndarray:
    """Rows of the exact 10 nearest neighbours (inner product of normalized vectors)."""
    if gpu:
        res = faiss.StandardGpuResources()
        return faiss.knn_gpu(res, queries, base, 10, metric=METRICS["cosine"])[1]
    return faiss.knn(queries, base, 10, metric=METRICS["cosine"])[1]


def faiss_figures(size: dict, no_gpu: str | None) -> dict:
    """IVF on the CPU and (unless ``no_gpu`` says why not) the GPU: build time, q/s and
    recall@10, both searched with the same parameters (the larger tuned ``nprobe``)."""
    rows, dim, n_queries = size["rows"], size["dim"], size["queries"]
    data = clustered(rows + n_queries, dim, size["clusters"], np.random.default_rng(0))
    queries = prepare_vectors(data[rows:], "cosine", "queries")
    out = dict.fromkeys(FIGURES["faiss"], no_gpu)
    with tempfile.TemporaryDirectory() as tmp:
        info = BackboneInfo("gpu-check", dim=dim)
        write_latents(Path(tmp) / "lat", [str(i) for i in range(rows)], data[:rows], info)
        truth = exact_top10(queries, prepare_vectors(data[:rows], "cosine", "base"), not no_gpu)
        del data
        ds = open_latents(Path(tmp) / "lat")
        built = {}  # device -> (index trained, filled and tuned; its build's wall time)
        for device in ["cpu"] if no_gpu else ["cpu", "gpu"]:
            started = time.perf_counter()
            index = build_index(ds, kind="ivf", gpu=device == "gpu", progress=False, save=False)
            built[device] = (index, round(time.perf_counter() - started, 2))
        params: dict = {}
        for index, _ in built.values():
            for name, value in index.info.params.items():
                params[name] = max(params.get(name, 0), value)
        for device, (index, seconds) in built.items():
            search = lambda i=index: i.search(queries, 10, params)  # noqa: E731
            qps = n_queries / min(timeit.repeat(search, number=1, repeat=3))
            recall = recall_at_10(index, queries, truth, params)
            out[f"faiss_{device}_build_s"] = seconds
            out[f"faiss_{device}_qps"] = round(qps, 1)
            out[f"faiss_{device}_recall_at_10"] = round(recall, 4)
    cpu_recall, gpu_recall = out["faiss_cpu_recall_at_10"], out["faiss_gpu_recall_at_10"]
    out.update(
        faiss_rows=rows, faiss_dim=dim, faiss_queries=n_queries,
        faiss_factory=built["cpu"][0].info.factory, faiss_params=params,
        faiss_gpu_vs_cpu_build=ratio(out["faiss_cpu_build_s"], out["faiss_gpu_build_s"], 2),
        faiss_gpu_vs_cpu_qps=ratio(out["faiss_gpu_qps"], out["faiss_cpu_qps"], 2),
        faiss_recall_diff=round(abs(gpu_recall - cpu_recall), 4) if no_gpu is None else no_gpu,
    )  # fmt: skip
    return out


# -- VAE training -------------------------------------------------------------------------


def shape_images(n: int, size: int) -> list[Path]:
    """``n`` images of the shapes corpus at ``size`` px, drawn once and kept."""
    from embedkit_vae.data import image_paths

    jobs = chunked(Path(tempfile.gettempdir()) / f"embedkit-gpu-check-shapes-{size}", n, 1000)
    in_parallel(make_shapes, jobs, size=size)
    return [path for folder, _, _ in jobs for path in image_paths(folder)]


def vae_figures(size: dict, no_gpu: str | None) -> dict:
    """Epoch time (the last epoch's train + validation seconds) of the same VAE run on the
    CPU and on the GPU (bf16 autocast, or fp16 with a GradScaler), same seed and options."""
    from embedkit_vae import train

    paths = shape_images(size["vae_images"], size["vae_size"])
    options = {"image_size": size["vae_size"], "channels": size["channels"], "patience": None}
    options |= {"batch_size": size["vae_batch"], "epochs": size["vae_epochs"], "progress": False}
    seconds = {"cpu": no_gpu, "cuda": no_gpu}
    with tempfile.TemporaryDirectory() as tmp:
        for device in ["cpu"] if no_gpu else ["cpu", "cuda"]:
            result = train(paths, Path(tmp) / device, "vae", device=device, **options)
            seconds[device] = result.history[-1]["seconds"]
    return {
        "vae_images": len(paths), "vae_image_size": size["vae_size"],
        "vae_batch_size": size["vae_batch"], "vae_cpu_epoch_s": seconds["cpu"],
        "vae_gpu_epoch_s": seconds["cuda"],
        "vae_gpu_vs_cpu": ratio(seconds["cpu"], seconds["cuda"], 2),
    }  # fmt: skip


# -- the run --------------------------------------------------------------------------------


def verdicts(results: dict, smoke: bool) -> dict:
    """Each target: met, MISSED, or why it was not judged."""
    out = {}
    for key, target, kind in TARGETS:
        value = results.get(key)
        label = f"{key} {'>=' if kind == 'min' else '<='} {target}"
        if smoke:
            out[label] = "n/a: smoke run (CPU, tiny sizes)"
        elif not isinstance(value, (int, float)):
            out[label] = f"not measured ({value})"
        else:
            met = value >= target if kind == "min" else value <= target
            out[label] = "met" if met else "MISSED"
    return out


def run_section(name: str, measure, results: dict) -> bool:
    """Measure one section into ``results`` and print it; on an exception its figures say
    so and the others still run. Returns whether it succeeded."""
    started = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        figures, ok = measure(), True
    except Exception as exc:  # one broken section must not hide the other figures
        traceback.print_exc()
        reason = f"error: {type(exc).__name__}: {first_line(exc, 200)}"
        figures, ok = dict.fromkeys(FIGURES[name], reason), False
    results.update(figures)
    for key, value in figures.items():
        print(f"  {key:>26}: {value}", flush=True)
    print(f"== {name}: {time.perf_counter() - started:.1f}s", flush=True)
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU only, tiny sizes, < 1 minute")
    parser.add_argument("--out", type=Path, help="default: results/gpu.json (gpu_smoke.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); "
                 "run it with --smoke for the CPU smoke run")  # fmt: skip
    started = time.perf_counter()
    size = SMOKE if args.smoke else FULL
    no_gpu = SKIPPED if args.smoke else None
    no_faiss_gpu = no_gpu or (None if faiss.get_num_gpus() else "skipped: faiss sees no GPU")
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # everything on the CPU, the tests included
        os.environ["EMBEDKIT_DEVICE"] = "cpu"
    results = {
        "mode": "smoke (CPU, tiny sizes)" if args.smoke else "gpu",
        "gpu_name": SKIPPED if args.smoke else torch.cuda.get_device_name(0),
    }
    sections = {
        "gpu_tests": lambda: gpu_tests(size),
        "embed": lambda: embed_figures(size),
        "faiss": lambda: faiss_figures(size, no_faiss_gpu),
        "vae": lambda: vae_figures(size, no_gpu),
    }
    ok = all([run_section(name, measure, results) for name, measure in sections.items()])
    ok = ok and not results["gpu_tests"].startswith("FAILED")
    results["targets"] = verdicts(results, args.smoke)
    results["total_s"] = round(time.perf_counter() - started, 1)
    for label, verdict in results["targets"].items():
        print(f"  target {label}: {verdict}")
    out = args.out or _common.RESULTS / ("gpu_smoke.json" if args.smoke else "gpu.json")
    _common.RESULTS = out.resolve().parent  # save_results writes RESULTS/<name>.json
    print(f"total {results['total_s']}s; results -> {save_results(out.stem, results)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
