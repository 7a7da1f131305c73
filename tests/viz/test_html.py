"""The HTML report: valid markup, inline PNGs that decode, tables, SVG scatter plots and PCA."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedkit.viz.html import PALETTE, Report, pca_2d, scatter_svg

VOID = {"meta", "img", "br", "hr", "link", "input"}
SVG_VOID = {"circle", "rect"}  # self-closed in the SVG we emit


class Collector(HTMLParser):
    """Records tags, image sources, table cells and text; checks tags nest properly."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells[-1] += data.strip()


def parse(markup: str) -> Collector:
    parser = Collector()
    parser.feed(markup)
    parser.close()
    assert parser.errors == []
    assert parser.stack == [], f"unclosed tags {parser.stack}"
    return parser


def decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :], validate=True)))
    image.load()
    assert image.format == "PNG"
    return image


def build_report() -> tuple[Report, Image.Image]:
    picture = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8), mode="RGB"
    )
    report = Report("Latents <of> cats & dogs")
    report.heading('Section "one"')
    report.text("Plain text with <script>alert(1)</script>")
    report.image("a grid", picture, path="/somewhere/grid.png")
    report.image("second", Image.new("L", (7, 9), 100))
    report.table(
        pd.DataFrame({"name": ["flag", "color=red"], "auc": [0.91234, 0.5], "n": [10, 20]})
    )
    points = np.random.default_rng(1).standard_normal((12, 2))
    report.svg("scatter", scatter_svg(points, ["a", "b", "c"] * 4, title="pts"))
    return report, picture


def test_report_is_valid_html_with_decodable_images(tmp_path):
    report, picture = build_report()
    path = report.write(tmp_path / "out" / "report.html")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left
    markup = path.read_text(encoding="utf-8")
    assert markup.startswith("<!doctype html>")
    parsed = parse(markup)
    assert parsed.tags.count("h1") == 1 and parsed.tags.count("h2") == 1
    assert "script" not in parsed.tags  # text is escaped
    assert "Plain text with <script>alert(1)</script>" in "".join(parsed.text)
    assert "Latents <of> cats & dogs" in "".join(parsed.text)

    assert len(parsed.images) == 2
    first, second = (decode(i["src"]) for i in parsed.images)
    assert first.size == (50, 30)
    np.testing.assert_array_equal(np.asarray(first.convert("RGB")), np.asarray(picture))
    assert second.size == (7, 9)
    assert parsed.images[0]["alt"] == "a grid"
    assert 'href="grid.png"' in markup  # linked by name, beside the report
    assert parsed.tags.count("a") == 1


def test_table_formats_floats_and_keeps_ints():
    report = Report("t")
    report.table(pd.DataFrame({"name": ["x<y", "z"], "auc": [0.91234, 0.5], "n": [10, 20]}))
    report.table(pd.DataFrame({"v": [1.23456]}), float_format="{:.1f}")
    parsed = parse(report.render())
    assert parsed.tags.count("table") == 2
    first = ["name", "auc", "n", "x<y", "0.912", "10", "z", "0.500", "20"]
    assert parsed.cells == [*first, "v", "1.2"]


def test_scatter_svg_has_a_circle_per_point_plus_legend():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((50, 2))
    labels = rng.choice(["cat", "dog", "<bird>"], size=50)
    svg = scatter_svg(points, labels, title='a "title"', size=300)
    root = ET.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    circles = root.findall(f"{ns}circle")
    assert len(circles) == 50 + 3
    texts = [t.text for t in root.findall(f"{ns}text")]
    assert texts == ["<bird>", "cat", "dog"]
    assert root.get("aria-label") == 'a "title"'
    assert root.get("width") == str(300 + 150) and root.get("height") == "300"
    dots = circles[:50]
    xs = np.array([float(c.get("cx")) for c in dots])
    ys = np.array([float(c.get("cy")) for c in dots])
    # points fill the plot inside the margin; y grows upwards
    assert xs.min() == pytest.approx(20, abs=0.1) and xs.max() == pytest.approx(280, abs=0.1)
    assert ys.min() == pytest.approx(20, abs=0.1) and ys.max() == pytest.approx(280, abs=0.1)
    assert ys[np.argmax(points[:, 1])] == pytest.approx(20, abs=0.1)
    # one colour per label, used consistently
    colour = {}
    for c, label in zip(dots, labels, strict=True):
        assert colour.setdefault(label, c.get("fill")) == c.get("fill")
    assert sorted(colour.values()) == sorted(PALETTE[:3])


def test_scatter_svg_degenerate_inputs():
    same = np.ones((4, 2))  # zero span must not divide by zero
    root = ET.fromstring(scatter_svg(same, ["a"] * 4))
    cx = {c.get("cx") for c in root.findall("{http://www.w3.org/2000/svg}circle")[:4]}
    assert cx == {"20.0"}
    many = np.random.default_rng(0).standard_normal((40, 2))
    root = ET.fromstring(scatter_svg(many, [f"k{i:02d}" for i in range(40)]))
    assert len(root.findall("{http://www.w3.org/2000/svg}circle")) == 40 + 30  # legend capped


def test_pca_recovers_a_plane_in_10d():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((10, 2)))  # orthonormal plane
    coords = rng.standard_normal((300, 2)) * [5.0, 2.0]
    offset = rng.standard_normal(10) * 3
    x = (coords @ basis.T + offset).astype(np.float32)
    projected = pca_2d(x)
    assert projected.shape == (300, 2) and projected.dtype == np.float32
    centered = x - x.mean(0)
    total = (centered.astype(np.float64) ** 2).sum()
    assert (projected.astype(np.float64) ** 2).sum() / total == pytest.approx(1.0, abs=1e-5)
    # components ordered by variance, uncorrelated, and a rotation of the true coordinates
    var = projected.var(0)
    assert var[0] > var[1]
    assert abs(np.corrcoef(projected.T)[0, 1]) < 1e-4
    fit, residual, *_ = np.linalg.lstsq(coords - coords.mean(0), projected, rcond=None)
    assert residual.max() < 1e-3 * total
    np.testing.assert_allclose(np.abs(np.linalg.det(fit)), 1.0, atol=1e-3)


def test_pca_on_noisy_plane_explains_nearly_all_variance():
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.standard_normal((10, 2)))
    x = rng.standard_normal((500, 2)) * 4 @ basis.T + 0.01 * rng.standard_normal((500, 10))
    projected = pca_2d(x)
    centered = x - x.mean(0)
    assert (projected**2).sum() / (centered**2).sum() > 0.999
