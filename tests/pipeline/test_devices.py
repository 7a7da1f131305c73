"""The local engine on devices: device lists and ``all``, model replicas (``cpu,cpu`` runs
the multi-GPU code on CPUs), latents in flight with a one-batch lag, the batch size each
device gets, cuDNN autotuning; the real CUDA behaviour in ``gpu`` tests."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sample_images import expected_vectors, make_images

import embedkit
from embedkit import Backbone, BackboneError, BackboneInfo, InputError, open_latents
from embedkit.cli import main
from embedkit.device import cudnn_autotune, precision_name, resolve_device, resolve_devices
from embedkit.pipeline.inflight import Landing, launch, run_lagged
from embedkit.pipeline.replicas import ReplicaPool, build_replicas, check_same_precision
from embedkit.pipeline.steps import default_batch_size


def run(source, out: Path, backbone="pixels", **kwargs):
    kwargs = {"num_workers": 0, "progress": False, **kwargs}
    return embedkit.embed(source, backbone, out, **kwargs)


def stored(out: Path) -> tuple[list[str], np.ndarray]:
    ds = open_latents(out)
    return ds.ids().tolist(), ds.to_numpy()


class MeanColor(Backbone):
    """Mean colour per image; records the batch sizes it saw and where it ran. ``poison``
    (a class switch, not part of the identity): a black image makes forward raise.
    ``delay``: seconds each forward takes."""

    poison = False

    def __init__(self, device: str | None = "cpu", delay: float = 0.0):
        super().__init__(device=device)
        self.model = torch.nn.Identity()
        self.delay = delay
        self.seen: list[tuple[int, str, str]] = []

    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo("meancolor", 3)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, np.float32) / 255).mean(dim=(0, 1))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append((len(batch), threading.current_thread().name, batch.device.type))
        time.sleep(self.delay)
        if type(self).poison and bool((batch.sum(dim=1) == 0).any()):
            raise RuntimeError("black image")
        return self.model(batch)


@pytest.fixture
def two_gpus(monkeypatch):
    """A CPU machine that says it has two CUDA devices (for device logic only)."""
    monkeypatch.delenv("EMBEDKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# -- device specs --------------------------------------------------------------------------


def test_device_lists(monkeypatch):
    monkeypatch.delenv("EMBEDKIT_DEVICE", raising=False)
    cpu = torch.device("cpu")
    assert resolve_devices("cpu") == [cpu]
    assert resolve_devices("cpu,cpu") == [cpu, cpu]
    assert resolve_devices(" cpu , cpu ,cpu") == [cpu] * 3
    assert resolve_devices(torch.device("cpu")) == [cpu]
    assert len(resolve_devices()) == 1
    with pytest.raises(BackboneError, match="unknown device 'tpu'"):
        resolve_devices("cpu,tpu")


def test_all_and_indices_resolve_to_cuda_devices(two_gpus):
    both = [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert resolve_devices("all") == both
    assert resolve_devices("cuda:0,cuda:1") == both
    assert resolve_devices("cuda:0,1") == both
    assert resolve_devices("0,1") == both
    assert resolve_devices("cuda:1,cpu") == [torch.device("cuda", 1), torch.device("cpu")]
    with pytest.raises(BackboneError) as err:
        resolve_devices("cuda:0,2")
    assert str(err.value) == "device 'cuda:2' asked for but 2 CUDA devices are visible"


def test_all_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackboneError) as err:
        resolve_devices("all")
    assert str(err.value) == "device 'all' asked for but CUDA is not available; use cpu"


def test_a_backbone_runs_on_one_device(monkeypatch):
    monkeypatch.delenv("EMBEDKIT_DEVICE", raising=False)
    with pytest.raises(BackboneError, match="names several devices; a backbone runs on one"):
        resolve_device("cpu,cpu")
    with pytest.raises(BackboneError, match="names several devices"):
        MeanColor(device="all")
    # the environment names a run's devices: a lone backbone takes the first
    monkeypatch.setenv("EMBEDKIT_DEVICE", "cpu,cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_devices() == [torch.device("cpu")] * 2


def test_precision_is_asked_of_each_gpu(two_gpus, monkeypatch):
    current = [0]

    @contextlib.contextmanager
    def on_device(device):
        before, current[0] = current[0], torch.device(device).index or 0
        yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: current[0] == 0)
    assert precision_name(torch.device("cuda", 0)) == "bf16"
    assert precision_name(torch.device("cuda", 1)) == "fp16"  # an older GPU beside it
    assert precision_name(torch.device("cuda", 1), enabled=False) == "fp32"
    with pytest.raises(BackboneError) as err:
        build_replicas(MeanColor(device="cpu"), "all")
    assert str(err.value) == (
        "the replicas would run in different precisions (cuda:0 bf16, cuda:1 fp16); one "
        "dataset holds one precision: pass --device with GPUs of one kind"
    )
    check_same_precision([MeanColor(device="cpu"), MeanColor(device="cpu")])  # no error


def test_cudnn_autotune_only_for_cuda_and_restored():
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune([torch.device("cpu")]):
        assert torch.backends.cudnn.benchmark == before
    torch.backends.cudnn.benchmark = False
    try:
        with cudnn_autotune([torch.device("cpu"), torch.device("cuda", 0)]):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_default_batch_size_suits_the_device(tmp_path):
    assert (default_batch_size("cuda"), default_batch_size("cpu")) == (256, 64)
    assert default_batch_size("mps") == 64
    make_images(tmp_path / "imgs", 70, size=8)
    backbone = MeanColor()
    run(tmp_path / "imgs", tmp_path / "lat", backbone=backbone)
    assert [n for n, _, _ in backbone.seen] == [64, 6]


def test_channels_last_is_a_layout_not_other_math():
    """Why the memory format is not in the identity: the same convolution either way, up
    to the order of additions (as between two GPU models)."""
    torch.manual_seed(0)
    conv, x = torch.nn.Conv2d(3, 8, 3), torch.rand(4, 3, 16, 16)
    with torch.inference_mode():
        plain = conv(x)
        last = conv.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(last, plain, rtol=1e-5, atol=1e-5)


# -- in flight: the one-batch lag ------------------------------------------------------------


def test_a_batch_is_waited_for_once_the_next_is_queued():
    log: list[str] = []

    def start(job):
        log.append(f"start {job}")
        if job == "bad":
            raise ValueError("boom")
        return Landing(torch.zeros(1), None)

    def finish(job, landing, error):
        log.append(f"finish {job}" if error is None else f"failed {job}")

    run_lagged(iter([0, 1, 2]), start, finish)
    assert log == ["start 0", "start 1", "finish 0", "start 2", "finish 1", "finish 2"]
    log.clear()
    run_lagged(iter([0, "bad", 2]), start, finish)
    assert log == ["start 0", "start bad", "finish 0", "failed bad", "start 2", "finish 2"]
    log.clear()
    run_lagged(iter([]), start, finish)
    assert log == []


def test_launch_on_cpu_needs_no_event():
    backbone = MeanColor()
    pixels = torch.rand(5, 3)
    landing = launch(backbone, pixels, normalize=False)
    assert landing.event is None and not landing.host.is_pinned()
    np.testing.assert_array_equal(landing.wait(), backbone.encode(pixels).numpy())
    unit = launch(backbone, pixels, normalize=True).wait()
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


# -- the pool of replicas ----------------------------------------------------------------------


def test_results_come_back_in_order_from_the_first_free_replica():
    slow, quick = MeanColor(delay=0.05), MeanColor()
    pool = ReplicaPool([slow, quick], normalize=False)
    batches = [torch.full((2, 3), float(i + 1)) for i in range(12)]
    got = []
    for i, batch in enumerate(batches):
        assert pool.submit(batch, f"batch {i}", i)
        got += list(pool.finished())
    got += list(pool.close())
    assert [tag for tag, _ in got] == list(range(12))
    for (i, vectors), batch in zip(got, batches, strict=True):
        np.testing.assert_array_equal(vectors, batch.numpy(), err_msg=f"batch {i}")
    assert slow.seen and len(quick.seen) > len(slow.seen)  # the free one takes more
    threads = {name for _, name, _ in slow.seen + quick.seen}
    assert threads == {"embedkit-replica-0", "embedkit-replica-1"}


def test_a_failure_gives_back_the_batches_before_it_then_stops(monkeypatch):
    monkeypatch.setattr(MeanColor, "poison", True)
    pool = ReplicaPool([MeanColor(delay=0.05), MeanColor()], normalize=False)
    batches = [torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3)]
    got = []
    with pytest.raises(BackboneError) as err:
        for i, batch in enumerate(batches):
            if not pool.submit(batch, f"batch {i}", i):
                break
            for tag, _ in pool.finished():
                got.append(tag)
        for tag, _ in pool.close():
            got.append(tag)
    assert got == [0]
    assert "backbone 'meancolor' failed in forward on batch 1: RuntimeError: black image" in str(
        err.value
    )
    assert list(pool.close()) == []  # nothing after the failure, and no hang


# -- the engine on two replicas ------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_two_replicas_write_what_one_device_writes(tmp_path, workers):
    make_images(tmp_path / "imgs", 23)
    one = run(tmp_path / "imgs", tmp_path / "one", batch_size=3, num_workers=workers)
    two = run(
        tmp_path / "imgs", tmp_path / "two", batch_size=3, num_workers=workers, device="cpu,cpu"
    )
    assert (one.embedded, two.embedded) == (23, 23)
    ids_one, vectors_one = stored(tmp_path / "one")
    ids_two, vectors_two = stored(tmp_path / "two")
    assert ids_two == ids_one  # the loader's order, not the replicas'
    np.testing.assert_allclose(vectors_two, vectors_one, rtol=0, atol=1e-6)
    paths = [tmp_path / "imgs" / i for i in ids_one]
    np.testing.assert_array_equal(vectors_two, expected_vectors(paths))
    meta_one, meta_two = open_latents(tmp_path / "one").meta, open_latents(tmp_path / "two").meta
    assert meta_two.backbone == meta_one.backbone
    assert meta_two.backbone.identity["precision"] == "fp32"


def test_two_replicas_record_bad_images(tmp_path):
    make_images(tmp_path / "imgs", 12, size=8)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    backbone = MeanColor(delay=0.02)
    result = run(
        tmp_path / "imgs", tmp_path / "lat", backbone=backbone, device="cpu,cpu", batch_size=2
    )
    assert (result.embedded, result.errors) == (12, 1)
    ds = open_latents(tmp_path / "lat")
    assert ds.ids().tolist() == [f"img_{i:04d}.png" for i in range(12)]
    assert ds.errors()["source"].str.endswith("broken.png").tolist() == [True]
    # the object given is the first replica; the second is its copy, on its own thread
    assert {name for _, name, _ in backbone.seen} == {"embedkit-replica-0"}


def test_a_replica_failure_keeps_earlier_batches_and_resume_completes(tmp_path, monkeypatch):
    paths = make_images(tmp_path / "imgs", 10, size=8)
    Image.new("RGB", (8, 8)).save(paths[7])  # black: batch 3 of 2 images fails
    monkeypatch.setattr(MeanColor, "poison", True)
    with pytest.raises(BackboneError) as err:
        run(
            tmp_path / "imgs",
            tmp_path / "lat",
            backbone=MeanColor(),
            device="cpu,cpu",
            batch_size=2,
        )
    message = str(err.value)
    assert "\n" not in message and "failed in forward" in message and "black image" in message
    ds = open_latents(tmp_path / "lat")
    assert ds.ids().tolist() == [f"img_{i:04d}.png" for i in range(6)]  # batches 0-2, in order
    assert ds.errors().empty  # a plugin's bug, not a bad image

    monkeypatch.setattr(MeanColor, "poison", False)
    again = run(tmp_path / "imgs", tmp_path / "lat", backbone=MeanColor(), device="cpu,cpu")
    assert (again.embedded, again.skipped) == (4, 6)
    run(tmp_path / "imgs", tmp_path / "one", backbone=MeanColor())
    both = dict(zip(*stored(tmp_path / "lat"), strict=True))
    one = dict(zip(*stored(tmp_path / "one"), strict=True))
    assert sorted(both) == sorted(one)
    for key, vector in one.items():
        np.testing.assert_allclose(both[key], vector, atol=1e-6)


class Fragile(MeanColor):
    """Its third ``preprocess`` call raises (in the loader, before the replicas)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def preprocess(self, image):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("preprocess bug")
        return super().preprocess(image)


def test_a_preprocess_failure_writes_the_batches_already_encoded(tmp_path):
    make_images(tmp_path / "imgs", 8, size=8)
    with pytest.raises(BackboneError, match="failed in preprocess"):
        run(tmp_path / "imgs", tmp_path / "lat", backbone=Fragile(), device="cpu,cpu", batch_size=2)
    assert open_latents(tmp_path / "lat").ids().tolist() == ["img_0000.png", "img_0001.png"]


def test_resume_on_two_replicas_embeds_only_new_images(tmp_path):
    make_images(tmp_path / "imgs", 6)
    assert run(tmp_path / "imgs", tmp_path / "lat", device="cpu,cpu", batch_size=4).embedded == 6
    paths = make_images(tmp_path / "imgs", 5, start=6)
    second = run(tmp_path / "imgs", tmp_path / "lat", device="cpu", batch_size=4)
    assert (second.embedded, second.skipped) == (5, 6)  # one device resumes a two-replica run
    ids, vectors = stored(tmp_path / "lat")
    assert ids[6:] == [p.name for p in paths]
    np.testing.assert_array_equal(vectors[6:], expected_vectors(paths))


def test_a_backbone_that_cannot_be_copied_is_one_line(tmp_path):
    make_images(tmp_path / "imgs", 2)
    backbone = MeanColor()
    backbone.lock = threading.Lock()
    with pytest.raises(BackboneError) as err:
        run(tmp_path / "imgs", tmp_path / "lat", backbone=backbone, device="cpu,cpu")
    assert str(err.value).startswith("backbone 'meancolor' cannot be copied for a replica on cpu")
    assert not (tmp_path / "lat").exists()


def test_cli_device_list_and_ray_refusal(tmp_path, capsys):
    make_images(tmp_path / "imgs", 5)
    with contextlib.suppress(SystemExit):
        main(["embed", str(tmp_path / "imgs"), "-b", "pixels", "-o", str(tmp_path / "lat"),
              "--device", "cpu,cpu", "--workers", "0", "--batch-size", "2"])  # fmt: skip
    assert capsys.readouterr().out.startswith("embedded 5 images")
    assert len(open_latents(tmp_path / "lat")) == 5
    with pytest.raises(InputError, match="names several devices: Ray places one actor per GPU"):
        embedkit.embed(tmp_path / "imgs", "pixels", tmp_path / "r", engine="ray", device="all")


# -- on a real GPU ---------------------------------------------------------------------------


class TunedProbe(MeanColor):
    """Records, per forward, whether cuDNN autotuning is on and the current CUDA device."""

    def forward(self, batch):
        self.seen.append((len(batch), str(batch.device), str(torch.backends.cudnn.benchmark)))
        return batch * 1.0


@pytest.mark.gpu
def test_cuda_latents_land_in_pinned_memory_behind_an_event():
    backbone = MeanColor(device="cuda")
    pixels = torch.rand(64, 3).pin_memory()
    landing = launch(backbone, pixels, normalize=False)
    assert landing.host.is_pinned() and landing.host.device.type == "cpu"
    assert isinstance(landing.event, torch.cuda.Event)
    np.testing.assert_allclose(landing.wait(), pixels.numpy(), rtol=0, atol=1e-6)
    assert landing.event.query()


@pytest.mark.gpu
def test_one_gpu_matches_the_cpu_and_autotunes(tmp_path):
    make_images(tmp_path / "imgs", 300, size=8)
    probe = TunedProbe(device="cuda")
    before = torch.backends.cudnn.benchmark
    run(tmp_path / "imgs", tmp_path / "gpu", backbone=probe)
    run(tmp_path / "imgs", tmp_path / "cpu", backbone=MeanColor())
    assert [n for n, _, _ in probe.seen] == [256, 44]  # the CUDA default batch size
    assert {tuned for _, _, tuned in probe.seen} == {"True"}
    assert torch.backends.cudnn.benchmark == before
    ids_gpu, vectors_gpu = stored(tmp_path / "gpu")
    ids_cpu, vectors_cpu = stored(tmp_path / "cpu")
    assert ids_gpu == ids_cpu
    np.testing.assert_allclose(vectors_gpu, vectors_cpu, atol=1e-6)
    assert open_latents(tmp_path / "gpu").backbone.identity["precision"] in ("bf16", "fp16")


@pytest.mark.gpu
def test_every_gpu_gets_a_replica_and_one_dataset_in_order(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    make_images(tmp_path / "imgs", 40)
    run(tmp_path / "imgs", tmp_path / "one", device="cuda:0", batch_size=4)
    run(tmp_path / "imgs", tmp_path / "all", device="all", batch_size=4)
    ids_one, vectors_one = stored(tmp_path / "one")
    ids_all, vectors_all = stored(tmp_path / "all")
    assert ids_all == ids_one
    np.testing.assert_allclose(vectors_all, vectors_one, atol=1e-6)
    replicas = build_replicas("pixels", "all")
    assert [str(r.device) for r in replicas] == [
        f"cuda:{i}" for i in range(torch.cuda.device_count())
    ]
