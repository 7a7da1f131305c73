"""``embedkit report LATENTS``: an HTML page about any latent dataset.

Sections: summary, a sample of the corpus, neighbour grids, k-means clusters, a PCA
scatter coloured by a label, reconstructions and interpolation strips (when the backbone
decodes), what the latents encode (probes of the carried labels, other datasets beside:
:mod:`embedkit.viz.probe_section`), then curation: near-duplicates, outliers and (with a
label column) possible label mistakes (:mod:`embedkit.viz.curation_sections`).
:func:`embedkit.demo.run_demo` adds latent-arithmetic sections.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedkit.algebra.clusters import KMeansResult, kmeans
from embedkit.index.persist import read_info
from embedkit.index.search import neighbors
from embedkit.store.dataset import LatentDataset, open_latents
from embedkit.viz.curation_sections import curation_sections
from embedkit.viz.grid import image_grid, save_png
from embedkit.viz.html import Report, pca_2d, scatter_svg
from embedkit.viz.pictures import LatentRenderer, interpolation_strip, neighbour_grid
from embedkit.viz.probe_section import probe_section

__all__ = [
    "build_report",
    "cluster_section",
    "decoder_sections",
    "latents_report",
    "projection_section",
    "save_figure",
]

MAX_SCATTER = 3000


def _label_column(ds: LatentDataset, label: str | None) -> str | None:
    if label is not None:
        return label
    for name in ds.columns:
        if name in ("id", "source"):
            continue
        values = ds.to_table([name]).column(name)
        if 1 < len(pd.unique(values.to_numpy(zero_copy_only=False))) <= 20:
            return name
    return None


def _sample_ids(ds: LatentDataset, n: int, seed: int) -> list[str]:
    ids = ds.ids()
    rng = np.random.default_rng(seed)
    return [str(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False)]


def save_figure(report: Report, out: Path, name: str, caption: str, image) -> None:
    """Save ``image`` as ``out/name`` and inline it in ``report`` with a link to the PNG."""
    path = save_png(image, out / name)
    report.image(caption, image, path)


def summary_table(ds: LatentDataset) -> pd.DataFrame:
    rows = [
        ("rows", len(ds)),
        ("dim", ds.dim),
        ("backbone", ds.backbone.name),
        ("normalized", ds.normalized),
        ("dtype", ds.meta.dtype),
        ("errors", len(ds.errors())),
        ("created", ds.meta.created),
    ]
    info = read_info(ds)
    if info is not None:
        rows += [("index", f"{info.kind} ({info.factory})"), ("index recall@10", info.recall)]
    return pd.DataFrame(rows, columns=["field", "value"]).astype({"value": str})


def decoder_sections(
    report: Report, ds: LatentDataset, out: Path, renderer: LatentRenderer, seed: int = 0
) -> None:
    """Reconstructions and interpolation strips (only for backbones with a decoder)."""
    ids = _sample_ids(ds, 8, seed + 1)
    originals = renderer.source_images(ids)
    decoded, _ = renderer.render(ds.vectors_of(ids))
    report.heading("Reconstructions")
    report.text("Top: corpus images. Bottom: decoder(encoder(image)).")
    grid = image_grid([originals, decoded], 72, [ids, ["decoded"] * len(ids)])
    save_figure(report, out, "reconstructions.png", "original vs reconstruction", grid)
    report.heading("Interpolation")
    for n, (a, b) in enumerate([(ids[0], ids[1]), (ids[2], ids[3])]):
        strip = interpolation_strip(ds, a, b, steps=8, mode="decode", cell=72)
        save_figure(
            report, out, f"interpolation_{n}.png", f"{a} → {b}: lerp (top), slerp (bottom)", strip
        )


def build_report(
    latents: str | Path | LatentDataset,
    out_dir: str | os.PathLike,
    label: str | None = None,
    clusters: int = 8,
    queries: int = 4,
    k: int = 8,
    seed: int = 0,
    title: str | None = None,
    compare: Sequence[str | Path | LatentDataset] = (),
) -> tuple[Report, dict]:
    """Fill a :class:`Report` about ``latents``; PNGs go to ``out_dir``. Returns the
    report (not yet written) and a dict of headline numbers. ``compare``: other latent
    datasets of the same images, probed beside this one."""
    ds = open_latents(latents)
    out = Path(out_dir)
    report = Report(title or f"embedkit report: {ds.path.name}")
    stats: dict = {"rows": len(ds), "dim": ds.dim, "backbone": ds.backbone.name}
    report.heading("Summary")
    report.table(summary_table(ds))
    renderer = LatentRenderer(ds, "auto", 64)
    sample = _sample_ids(ds, 24, seed)
    report.heading("Corpus sample")
    images = renderer.source_images(sample)
    grid = image_grid([images[:12], images[12:]], 64)
    save_figure(report, out, "corpus_sample.png", "random images from the corpus", grid)
    report.heading("Nearest neighbours")
    found = neighbors(ds, ids=sample[:queries], k=k)
    grid = neighbour_grid(ds, found, cell=64)
    caption = f"{k} nearest neighbours of {queries} random images"
    save_figure(report, out, "neighbours.png", caption, grid)
    result = cluster_section(report, ds, out, renderer, clusters, seed)
    stats["cluster_sizes"] = result.sizes.tolist()
    label = _label_column(ds, label)
    projection_section(report, ds, label, result, seed)
    if renderer.mode == "decode":
        decoder_sections(report, ds, out, renderer, seed)
    probes = probe_section(report, ds, compare, seed)
    if probes is not None:
        stats["probes"] = probes.to_dict("records")
    stats.update(curation_sections(report, ds, out, label))
    return report, stats


def cluster_section(
    report: Report,
    ds: LatentDataset,
    out: Path,
    renderer: LatentRenderer,
    clusters: int,
    seed: int,
) -> KMeansResult:
    """k-means the latents and show the images nearest each centroid."""
    report.heading("Clusters")
    result = kmeans(ds, min(clusters, len(ds)), seed=seed)
    assignments = result.assignments
    rows, titles = [], []
    for c in range(len(result.centroids)):
        members = assignments[assignments["cluster"] == c].nsmallest(8, "distance")
        rows.append(renderer.source_images(members["id"].astype(str).tolist()))
        titles.append(f"cluster {c} (n={int(result.sizes[c])})")
    grid = image_grid(rows, 56, row_titles=titles)
    save_figure(report, out, "clusters.png", "the 8 images nearest each k-means centroid", grid)
    return result


def projection_section(
    report: Report, ds: LatentDataset, label: str | None, clusters: KMeansResult, seed: int
) -> None:
    """PCA scatter plots of a sample, coloured by ``label`` and by k-means cluster."""
    keep = np.random.default_rng(seed).permutation(len(ds))[:MAX_SCATTER]
    points = pca_2d(ds.to_numpy()[keep].astype(np.float32))
    report.heading("2-D projection (PCA)")
    if label is not None:
        values = ds.to_table([label]).column(label).to_numpy(zero_copy_only=False)[keep]
        report.svg(f"PCA of the latents, coloured by {label}", scatter_svg(points, values))
    cluster_of = clusters.assignments["cluster"].to_numpy()[keep]
    report.svg(
        "PCA of the latents, coloured by k-means cluster",
        scatter_svg(points, [f"cluster {c}" for c in cluster_of]),
    )


def latents_report(
    latents: str | Path | LatentDataset,
    out_dir: str | os.PathLike,
    label: str | None = None,
    seed: int = 0,
    compare: Sequence[str | Path | LatentDataset] = (),
) -> Path:
    """Write ``out_dir/report.html`` (plus PNGs) for any latent dataset; returns its path.
    ``compare``: other latent datasets of the same images, probed beside this one.

    Example:
        >>> latents_report("latents/", "report/", compare=["lite0-latents/"])
    """
    report, _ = build_report(latents, out_dir, label=label, seed=seed, compare=compare)
    return report.write(Path(out_dir) / "report.html")
