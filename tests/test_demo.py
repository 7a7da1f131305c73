"""The main job end to end (`embedkit demo --quick`) and its HTML report in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import embedkit
from embedkit.images.corpus import make_shapes
from embedkit.viz.report import latents_report

pytestmark = pytest.mark.slow
EMBEDKIT = str(Path(sys.executable).parent / "embedkit")
PNGS = [
    "corpus_sample",
    "neighbours",
    "clusters",
    "reconstructions",
    "interpolation_0",
    "sweep_color",
    "sweep_filled",
    "analogy",
    "neighbours_vae",
    "neighbours_pretrained",
]
PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    circles: document.querySelectorAll("svg circle").length,
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent)}));
});</script>"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    started = time.monotonic()
    done = subprocess.run(
        [EMBEDKIT, "demo", "--quick", "-o", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, time.monotonic() - started


def browser_probe(page: Path, tmp_path: Path) -> dict:
    """Open ``page`` in headless Chromium and report what actually rendered."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
        )
    probe = tmp_path / "probe.html"  # images are inlined, so the copy renders the same
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, f"the page did not finish loading in Chromium: {done.stderr[-1000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_demo_quick_finishes_in_time_and_prints_a_summary(demo):
    out, stdout, seconds = demo
    print(stdout)
    assert seconds < 120, f"--quick took {seconds:.0f}s; it must stay under 2 minutes"
    assert f"report -> {out / 'report.html'}" in stdout
    assert f"embedkit serve {out / 'latents'}" in stdout  # what to try next
    assert re.search(r"rows 1500 +dim 32 +index flat +recall@10 1\.000", stdout)
    assert "time per stage: corpus" in stdout


def test_demo_numbers(demo):
    _, stdout, _ = demo
    mse = float(re.search(r"held-out reconstruction MSE ([\d.]+)", stdout).group(1))
    red = int(re.search(r"turned (\d+)% of blue images red", stdout).group(1))
    filled = float(re.search(r"filled ([\d.]+)", stdout).group(1))
    assert mse < 0.01  # the mean-image baseline is ~0.026
    assert red >= 75  # a short --quick run; the full demo and the slow tests demand more
    assert filled > 0.85
    # the probes: an ImageNet CNN's deep stages read shape; the small VAE barely does
    line = stdout.split("shape k-NN accuracy")[1].splitlines()[0]
    shape = dict(re.findall(r"(\w+ \w+) ([\d.]+)", line))
    assert float(shape["efficientnet_lite0 stage4"]) >= 0.9
    assert float(shape["efficientnet_lite0 stage4"]) > float(shape["latents all"]) + 0.2


def test_demo_writes_every_picture_and_table(demo):
    out, _, _ = demo
    for name in PNGS:
        assert (out / f"{name}.png").stat().st_size > 1000, name
    vectors = embedkit.load_vectors(out / "attribute_vectors.parquet")
    assert {"filled", "color=red", "shape=circle", "size=large"} <= set(vectors)
    assert len(embedkit.open_latents(out / "latents")) == 1500


def test_demo_report_renders_in_a_browser(demo, tmp_path):
    out, _, _ = demo
    result = browser_probe(out / "report.html", tmp_path)
    assert result["images"] == result["loaded"] >= len(PNGS)
    assert result["circles"] > 1500  # two PCA scatters of 1500 points each, plus legends
    for heading in [
        "Corpus sample",
        "Reconstructions",
        "Nearest neighbours",
        "Attribute vectors",
        "Latent arithmetic",
        "Interpolation",
        "2-D projection (PCA)",
        "Clusters",
        "What the latents encode",
        "Neighbours: VAE and pretrained CNN",
        "Time per stage",
    ]:
        assert heading in result["headings"]


def test_report_for_any_latents_without_a_decoder(tmp_path):
    labels = make_shapes(tmp_path / "corpus", n=200, size=32)
    embedkit.embed(labels, "pixels", tmp_path / "lat", num_workers=0, progress=False)
    page = latents_report(tmp_path / "lat", tmp_path / "report")
    result = browser_probe(page, tmp_path / "report")
    assert result["images"] == result["loaded"] >= 3
    assert "Reconstructions" not in result["headings"]
    assert "Nearest neighbours" in result["headings"] and "Clusters" in result["headings"]


def test_report_command(tmp_path):
    labels = make_shapes(tmp_path / "corpus", n=120, size=32)
    embedkit.embed(labels, "pixels", tmp_path / "lat", num_workers=0, progress=False)
    done = subprocess.run(
        [EMBEDKIT, "report", str(tmp_path / "lat"), "--label", "shape"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lat" / "report" / "report.html").is_file()
    assert (
        "PCA of the latents, coloured by shape"
        in (tmp_path / "lat" / "report" / "report.html").read_text()
    )
