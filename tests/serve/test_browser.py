"""The explorer page of `embedkit serve` in a real headless Chromium, against the real server:
browse, neighbours, query by image, attribute edits, interpolation, the map and its export,
labels rendered as text, and a console free of errors.

EMBEDKIT_SCREENSHOT=1 also saves a full-page screenshot to docs/images/explorer.png."""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sample_images import TINY_VAE

import embedkit
from embedkit.images.corpus import make_shapes, read_labels

XSS = "<script>alert(1)</script>"
N = 120  # two pages of 60
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "explorer.png"
TIMEOUT_MS = 20_000

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
# Debian's Chromium: Playwright drives it as it is (no browser download)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    """120 labelled shapes embedded by a tiny VAE trained for one epoch (so it decodes); a
    ``note`` label column, first of the labels, holds a script tag on one row."""
    from embedkit_vae import train

    root = tmp_path_factory.mktemp("explorer")
    corpus = root / "corpus"
    make_shapes(corpus, n=N, size=32, seed=3)
    labels = read_labels(corpus)
    note = pd.Series(["plain"] * len(labels), dtype=object)
    note[7] = XSS
    labels.insert(2, "note", note)
    table = corpus / "labels_note.parquet"
    labels.to_parquet(table)
    run = root / "vae"
    if os.environ.get("EMBEDKIT_SCREENSHOT") == "1":
        # the docs picture shows a model that learnt the shapes: `embedkit demo --quick`'s
        # settings on a corpus of its own (about a minute on two cores)
        make_shapes(root / "train", n=1500, size=32, seed=0)
        train(root / "train", run, "vae", epochs=8, latent_dim=32, image_size=32, progress=False)
    else:  # the test needs a backbone that decodes, not a good one
        train(corpus, run, "vae", epochs=1, device="cpu", **TINY_VAE)
    out = root / "lat"
    embedkit.embed(table, f"vae:{run}", out, device="cpu", num_workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def server(latents):
    from embedkit.serve.server import start_in_thread

    url, stop = start_in_thread(latents, port=0)
    try:
        yield url.rstrip("/")
    finally:
        stop()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


PIXELS = """(img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
}"""

# drag an image file over the page and drop it, as a file manager would
DROP = """async () => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 32;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#1c1c20";
  ctx.fillRect(0, 0, 32, 32);
  ctx.fillStyle = "#325af0";
  ctx.fillRect(8, 8, 16, 16);
  const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], "dropped.png", { type: "image/png" }));
  for (const type of ["dragenter", "dragover", "drop"]) {
    document.body.dispatchEvent(
      new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
  }
}"""

# the centre of the topmost point of the map canvas (a pixel in a legend colour: not a
# selection ring), in CSS pixels from the canvas's top-left corner; and how many are painted
FIRST_POINT = """(canvas) => {
  const swatches = [...document.querySelectorAll("#map-legend .swatch")].map((s) =>
    getComputedStyle(s).backgroundColor.match(/\\d+/g).slice(0, 3).map(Number));
  const { data, width } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const scale = canvas.width / canvas.getBoundingClientRect().width;
  let painted = 0, first = -1;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] < 150) continue;
    painted++;
    const near = swatches.some((c) =>
      Math.abs(c[0] - data[i]) + Math.abs(c[1] - data[i + 1]) + Math.abs(c[2] - data[i + 2]) < 40);
    if (first < 0 && near) first = i / 4;
  }
  if (first < 0) return { painted };
  return { painted, x: (first % width) / scale + 1, y: Math.floor(first / width) / scale + 3 };
}"""


# Every page.wait_for_function below is given a function, not an expression: the page's
# Content-Security-Policy forbids eval, which is how Playwright runs a bare expression.


def _loaded(page, selector: str) -> None:
    """Wait until the image at ``selector`` has loaded."""
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s);"
        " return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=TIMEOUT_MS,
    )


def _until_text(page, selector: str, text: str) -> None:
    """Wait until the element at ``selector`` shows ``text``."""
    page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.textContent ?? '').includes(t)",
        arg=[selector, text],
    )


def test_explorer_in_a_real_browser(server, browser, tmp_path):
    started = time.monotonic()
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: errors.append(str(e)))

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)

    # -- browse: header facts, a page of thumbnails, paging, filters
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='true']")
    assert page.text_content("#fact-rows") == str(N)
    assert page.text_content("#fact-backbone").startswith("vae:")
    cards = page.locator("#grid .card")
    assert cards.count() == 60
    for i in range(4):
        _loaded(page, f"#grid li:nth-child({i + 1}) img")
    assert page.text_content("#page-text").startswith("Page 1 of 2")
    page.click("#page-next")
    _until_text(page, "#page-text", "Page 2 of 2")
    assert cards.count() == N - 60 and page.is_disabled("#page-next")
    page.click("#page-prev")
    _until_text(page, "#page-text", "Page 1 of 2")

    # the script label: an option of the note filter, a chip, a label in the detail panel
    note = page.locator("select[data-column='note']")
    assert XSS in note.locator("option").all_text_contents()
    note.select_option(XSS)
    page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 1")
    assert XSS in page.locator("#grid .chip").all_text_contents()
    cards.first.click()
    page.wait_for_selector("#neighbours .card")
    assert XSS in page.locator("#selected-labels dd").all_text_contents()
    assert page.locator("#grid script, #detail script, #filters script").count() == 0
    page.click("#filter-clear")
    page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 60")

    # -- neighbours: click a thumbnail, then walk on from a neighbour
    first_id = cards.nth(5).get_attribute("data-id")
    cards.nth(5).click()
    page.wait_for_function(
        "(id) => document.querySelector('#selected-id').textContent === id"
        " && document.querySelectorAll('#neighbours .card').length === 12",
        arg=first_id,
    )
    scores = page.locator("#neighbours .score").all_text_contents()
    assert len(scores) == 12 and all(re.fullmatch(r"(score|dist) -?\d+\.\d{3}", s) for s in scores)
    page.click("#set-a")
    step = page.locator("#neighbours .card").nth(1)
    second_id = step.get_attribute("data-id")
    step.click()
    page.wait_for_function(
        "(id) => document.querySelector('#selected-id').textContent === id", arg=second_id
    )
    assert page.locator("#trail button").all_text_contents() == [first_id, second_id]
    _loaded(page, "#selected-img")

    # -- interpolate A -> B: a strip of decoded images
    page.click("#set-b")
    page.wait_for_function("() => document.querySelectorAll('#interp-strip img').length >= 2")
    _loaded(page, "#interp-strip li:last-child img")
    assert page.get_attribute("#interp-strip img", "src").startswith("data:image/png;base64,")

    # -- edit: the decoded image follows the alpha slider
    page.select_option("#edit-column", "color")
    page.select_option("#edit-value", "red")
    page.wait_for_function(
        "() => { const i = document.querySelector('#edit-img');"
        " return !i.hidden && i.src.includes('column=color') && i.src.includes('alpha=0.0')"
        " && i.naturalWidth > 0; }"
    )
    before = page.eval_on_selector("#edit-img", PIXELS)
    src_before = page.get_attribute("#edit-img", "src")
    page.fill("#alpha", "2.5")
    page.wait_for_function(
        "() => { const i = document.querySelector('#edit-img');"
        " return i.src.includes('alpha=2.5') && i.complete && i.naturalWidth > 0; }"
    )
    assert page.get_attribute("#edit-img", "src") != src_before
    assert "value=red" in page.get_attribute("#edit-img", "src")
    after = page.eval_on_selector("#edit-img", PIXELS)
    assert np.abs(np.array(before) - np.array(after)).max() > 0, "the edit changed no pixel"

    # -- query by image: an image dropped on the page, then one from the file chooser
    page.evaluate(DROP)
    page.wait_for_function(
        "() => document.querySelector('#selected-id').textContent === 'Query: dropped.png'"
        " && document.querySelectorAll('#neighbours .card').length === 12"
    )
    assert page.is_hidden("#drop")
    upload = tmp_path / "query.png"
    Image.new("RGB", (40, 40), (230, 40, 40)).save(upload)
    page.set_input_files("#query-file", str(upload))
    page.wait_for_function(
        "() => document.querySelector('#selected-id').textContent === 'Query: query.png'"
        " && document.querySelectorAll('#neighbours .card').length === 12"
    )
    _loaded(page, "#selected-img")

    # a screenshot: the grid filtered to blue shapes, one selected, every panel filled in
    page.set_viewport_size({"width": 1440, "height": 1800})
    page.select_option("select[data-column='color']", "blue")
    _until_text(page, "#page-text", "matching")
    chosen = cards.nth(2).get_attribute("data-id")
    cards.nth(2).click()
    page.wait_for_function(
        "(id) => document.querySelector('#selected-id').textContent === id"
        " && document.querySelectorAll('#neighbours .card').length === 12"
        " && document.querySelector('#edit-img').src.includes(`id=${id}&`)"
        " && document.querySelector('#edit-img').naturalWidth > 0",
        arg=chosen,
    )
    for selector in ["#selected-img", "#neighbours li:last-child img", "#grid li:last-child img"]:
        _loaded(page, selector)
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "the screenshot is (nearly) blank"
    if os.environ.get("EMBEDKIT_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.open(shot).convert("RGB")  # 256 colours: half the bytes, same look
        picture.quantize(colors=256, dither=Image.Dither.NONE).save(DOCS_SHOT, optimize=True)

    # -- map: a painted canvas with a legend; hover shows a tooltip, click selects
    page.click("#tab-map")
    _until_text(page, "#map-note", "points")
    page.wait_for_function("() => document.querySelectorAll('#map-legend li').length > 0")
    page.wait_for_timeout(100)  # one animation frame
    canvas = page.locator("#map-canvas")
    point = canvas.evaluate(FIRST_POINT)
    assert point["painted"] > 50, "the map canvas is blank"
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_selector("#map-tip:not([hidden])")
    hovered = page.text_content("#map-tip-text").split(" · ")[0]
    _loaded(page, "#map-tip-img")
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_function(
        "(id) => document.querySelector('#selected-id').textContent === id", arg=hovered
    )

    # shift-drag over the whole map selects every point; export them as CSV
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=4)
    page.mouse.up()
    page.keyboard.up("Shift")
    assert page.text_content("#map-selection") == f"{N} selected"
    with page.expect_download() as download:
        page.click("#export-csv")
    exported = pd.read_csv(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert len(exported) == N

    # -- no script ran, nothing went wrong
    assert dialogs == []
    assert errors == []
    assert [m for m in console if m.startswith("error")] == []

    # -- a rejected upload shows the server's message (the failed request is logged)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.click("#tab-grid")
    page.set_input_files("#query-file", str(bad))
    page.wait_for_selector("#status.error")
    message = page.text_content("#status")
    assert message and "\n" not in message and "415" not in message  # the server's words
    assert errors == [] and dialogs == []
    print(f"browser session took {time.monotonic() - started:.1f}s")
