"""Nothing silently mixed, duplicated or lost: latent-space identity, resume by source,
changed files, plugin failures, one writer at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sample_images import expected_vectors, make_images

import embedkit
from embedkit import Backbone, BackboneError, BackboneInfo, InputError, open_latents
from embedkit.store.writer import LatentWriter


def run(source, out: Path, backbone="pixels", **kwargs) -> embedkit.EmbedResult:
    return embedkit.embed(source, backbone, out, num_workers=0, progress=False, **kwargs)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# -- the identity of a latent space ---------------------------------------------------


def test_identity_is_recorded(tmp_path):
    make_images(tmp_path / "photos", 3)
    run(tmp_path / "photos", tmp_path / "lat")
    identity = open_latents(tmp_path / "lat").backbone.identity
    assert identity == {"weights": "none", "precision": "fp32", "embedkit": embedkit.__version__}


def test_other_weights_under_the_same_name_are_refused(tmp_path):
    # a VAE re-trained into the same run folder, a timm upgrade with other default weights:
    # same name, same config, other weights -> another latent space
    make_images(tmp_path / "photos", 4)
    make_images(tmp_path / "more", 2, start=10)
    model = embedkit.load_backbone("timm/resnet18", pretrained=False, device="cpu").model
    weights = tmp_path / "r18.safetensors"
    save_file(model.state_dict(), weights)
    run(
        tmp_path / "photos",
        tmp_path / "lat",
        "timm/resnet18",
        backbone_options={"weights": weights},
    )
    with torch.no_grad():
        model.conv1.weight.mul_(1.5)
    save_file(model.state_dict(), weights)  # the same file name, retrained
    with pytest.raises(InputError) as exc:
        run(
            tmp_path / "more",
            tmp_path / "lat",
            "timm/resnet18",
            backbone_options={"weights": weights},
        )
    message = one_line(exc)
    assert "another latent space" in message and "weights" in message and "new folder" in message
    assert len(open_latents(tmp_path / "lat")) == 4  # nothing appended
    # the stored weights digest also guards rebuilding the backbone (queries by image)
    with pytest.raises(BackboneError, match="other weights than the ones that made"):
        embedkit.neighbors(tmp_path / "lat", images=tmp_path / "more" / "img_0010.png")


def test_other_precision_is_refused(tmp_path, monkeypatch):
    # a run begun on a GPU under bf16 autocast, resumed on a CPU in fp32
    make_images(tmp_path / "photos", 4)
    make_images(tmp_path / "more", 2, start=10)
    monkeypatch.setattr(Backbone, "precision", property(lambda self: "bf16"))
    run(tmp_path / "photos", tmp_path / "lat")
    monkeypatch.undo()
    with pytest.raises(InputError) as exc:
        run(tmp_path / "more", tmp_path / "lat")
    assert "precision bf16 vs fp32" in one_line(exc)


def test_other_embedkit_version_is_refused(tmp_path, monkeypatch):
    make_images(tmp_path / "photos", 2)
    make_images(tmp_path / "more", 2, start=10)
    run(tmp_path / "photos", tmp_path / "lat")
    monkeypatch.setattr("embedkit.plugins.backbone.__version__", "99.0")
    with pytest.raises(InputError, match=rf"embedkit {embedkit.__version__} vs 99.0"):
        run(tmp_path / "more", tmp_path / "lat")


# -- resume recognises images by their source --------------------------------------------


def test_resume_with_other_inputs_adds_only_the_new_image(tmp_path):
    photos = make_images(tmp_path / "photos", 5)
    (new,) = make_images(tmp_path / "elsewhere", 1, start=50)
    run(tmp_path / "photos", tmp_path / "lat")  # ids relative to photos/
    result = run([*photos, new], tmp_path / "lat")  # common parent: tmp_path, other ids
    assert (result.embedded, result.skipped) == (1, 5)
    ds = open_latents(tmp_path / "lat")
    sources = ds.to_table(["source"]).column("source").to_pylist()
    assert len(ds) == 6 and len(set(sources)) == 6 and len(set(ds.ids())) == 6


def test_an_id_taken_by_another_image_is_an_error(tmp_path):
    make_images(tmp_path / "photos", 2)
    make_images(tmp_path / "other", 2, start=20)
    for i, path in enumerate(sorted((tmp_path / "other").iterdir())):
        path.rename(path.with_name(f"img_{i:04d}.png"))  # same relative names, other images
    run(tmp_path / "photos", tmp_path / "lat")
    with pytest.raises(InputError) as exc:
        run(tmp_path / "other", tmp_path / "lat")
    message = one_line(exc)
    assert "id 'img_0000.png'" in message and "already used" in message
    assert str(tmp_path / "photos" / "img_0000.png") in message
    assert len(open_latents(tmp_path / "lat")) == 2


def test_changed_file_is_reported_then_updated(tmp_path):
    paths = make_images(tmp_path / "photos", 4)
    run(tmp_path / "photos", tmp_path / "lat")
    before = open_latents(tmp_path / "lat").vectors_of(["img_0002.png"])[0]
    Image.new("RGB", (40, 40), (250, 10, 10)).save(paths[2])  # edited in place
    with pytest.warns(UserWarning, match="1 images changed since they were embedded"):
        stale = run(tmp_path / "photos", tmp_path / "lat")
    assert (stale.embedded, stale.skipped, stale.stale) == (0, 4, 1)
    np.testing.assert_array_equal(
        open_latents(tmp_path / "lat").vectors_of(["img_0002.png"])[0], before
    )
    updated = run(tmp_path / "photos", tmp_path / "lat", update=True)
    assert (updated.embedded, updated.replaced, updated.stale) == (1, 1, 0)
    ds = open_latents(tmp_path / "lat")
    assert sorted(ds.ids().tolist()) == [f"img_{i:04d}.png" for i in range(4)]
    np.testing.assert_allclose(
        ds.vectors_of(["img_0002.png"])[0], expected_vectors([paths[2]])[0], atol=1e-6
    )
    again = run(tmp_path / "photos", tmp_path / "lat")
    assert (again.embedded, again.stale) == (0, 0)


# -- a plugin's bug is not a bad image ---------------------------------------------------


class Fragile(Backbone):
    """Mean colour; ``preprocess`` or ``forward`` raises on a chosen call."""

    def __init__(self, fail_in: str, fail_at: int):
        super().__init__(device="cpu")
        self.fail_in, self.fail_at, self.calls = fail_in, fail_at, 0

    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo("fragile", 3)

    def preprocess(self, image):
        self.calls += self.fail_in == "preprocess"
        if self.fail_in == "preprocess" and self.calls == self.fail_at:
            raise RuntimeError("preprocess bug")
        return torch.from_numpy(np.asarray(image, np.float32)).mean(dim=(0, 1))

    def forward(self, batch):
        self.calls += self.fail_in == "forward"
        if self.fail_in == "forward" and self.calls == self.fail_at:
            raise RuntimeError("forward bug")
        return batch


@pytest.mark.parametrize("step", ["preprocess", "forward"])
def test_plugin_failure_stops_the_run_and_is_not_an_image_error(tmp_path, step):
    make_images(tmp_path / "photos", 8)
    fail_at = 3 if step == "preprocess" else 2  # in the second batch of two images
    with pytest.raises(BackboneError) as exc:
        embedkit.embed(
            tmp_path / "photos", Fragile(step, fail_at), tmp_path / "lat",
            batch_size=2, num_workers=0, progress=False,
        )  # fmt: skip
    message = one_line(exc)
    assert f"backbone 'fragile' failed in {step}" in message and f"{step} bug" in message
    assert "nothing was written for this batch" in message
    ds = open_latents(tmp_path / "lat")
    assert ds.ids().tolist() == ["img_0000.png", "img_0001.png"]  # the first batch only
    assert len(ds.errors()) == 0  # not recorded as a bad image


def test_plugin_failure_names_the_plugin(tmp_path, ektest_plugin, monkeypatch):
    make_images(tmp_path / "photos", 2)
    backbone = embedkit.load_backbone("ektest", device="cpu")

    def broken(image):
        raise ValueError("bad bins")

    monkeypatch.setattr(backbone, "preprocess", broken)
    with pytest.raises(BackboneError, match=r"backbone 'ektest' \(plugin 'ektest'\) failed in"):
        embedkit.embed(tmp_path / "photos", backbone, tmp_path / "lat", num_workers=0)


# -- one writer at a time -----------------------------------------------------------------


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    make_images(tmp_path / "photos", 2)
    holder = LatentWriter(tmp_path / "lat", BackboneInfo("x", 3))
    with pytest.raises(InputError) as exc:
        run(tmp_path / "photos", tmp_path / "lat")
    assert one_line(exc) == (
        f"another embed is writing to {tmp_path / 'lat'} (pid {os.getpid()}); wait for it "
        "to finish, or write to another folder"
    )
    holder.close()
    assert run(tmp_path / "photos", tmp_path / "lat", backbone=_mean3()).embedded == 2


def _mean3():
    return Fragile("neither", 0)


def test_writer_in_another_process_is_refused_until_it_dies(tmp_path):
    make_images(tmp_path / "photos", 2)
    code = textwrap.dedent(f"""
        import sys, time
        from embedkit.plugins.info import BackboneInfo
        from embedkit.store.writer import LatentWriter
        writer = LatentWriter({str(tmp_path / "lat")!r}, BackboneInfo("fragile", 3))
        print("locked", flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(
            InputError, match=rf"another embed is writing to .* \(pid {child.pid}\)"
        ):
            run(tmp_path / "photos", tmp_path / "lat", backbone=_mean3())
    finally:
        child.kill()
        child.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the OS releases a dead process's lock
        try:
            result = run(tmp_path / "photos", tmp_path / "lat", backbone=_mean3())
            break
        except InputError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert result.embedded == 2


def test_errors_are_written_as_they_happen(tmp_path, monkeypatch):
    monkeypatch.setattr("embedkit.store.writer.SECONDS_PER_ERROR_FLUSH", 0.0)
    writer = LatentWriter(tmp_path / "lat", BackboneInfo("x", 3))
    writer.write_errors(["a.png"], ["truncated"])
    # the errors part exists before the writer closes: a killed run keeps it
    assert embedkit.store.read_errors(tmp_path / "lat")["source"].tolist() == ["a.png"]
    writer.write_errors([f"{i}.png" for i in range(300)], ["bad"] * 300)
    assert len(embedkit.store.read_errors(tmp_path / "lat")) == 301
    writer.close()
