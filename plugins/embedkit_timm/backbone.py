"""TimmBackbone: pooled pre-logits or multi-scale pooled intermediate features of a timm model."""

from __future__ import annotations

import difflib
import hashlib
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torchvision.transforms import Compose
from torchvision.transforms.functional import pil_to_tensor

from embedkit.errors import BackboneError, BackboneNotFound
from embedkit.plugins.backbone import Backbone
from embedkit.plugins.info import BackboneInfo
from embedkit.plugins.seeding import model_building
from embedkit_timm.crop_resize import CropResize, fuse
from embedkit_timm.weights import load_weights


@lru_cache(maxsize=1)
def _all_model_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


#: the to-tensor steps of a timm eval transform (torchvision's and timm's own)
TO_TENSOR = ("ToTensor", "MaybeToTensor")


def name_seed(model_name: str) -> int:
    """The torch seed random weights of ``model_name`` are drawn with (stable across
    processes and Python's hash randomisation)."""
    return int(hashlib.sha256(model_name.encode()).hexdigest()[:8], 16)


def close_model_names(name: str) -> list[str]:
    """timm model names that look like ``name``."""
    return difflib.get_close_matches(name, _all_model_names(), n=5, cutoff=0.6)


class TimmBackbone(Backbone):
    """A timm model as an encoder.

    Args:
        model_name: any name from ``timm.list_models()``, e.g. ``resnet50``.
        pretrained: fetch timm's pretrained weights through the Hugging Face hub.
        weights: a local ``.safetensors`` / ``.pth`` file to load instead.
        layers: feature stages to global-average-pool and concatenate (indices into
            ``model.feature_info``, negative counts from the end); ``None`` uses the
            pooled pre-logits of the classifier head.
        device: ``cpu``, ``cuda``, ``mps``; default picks the best available.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = True,
        weights: str | Path | None = None,
        layers: Sequence[int] | int | None = None,
        device: str | None = None,
        autocast: bool = True,
    ):
        super().__init__(device=device, autocast=autocast)
        if not timm.is_model(model_name):
            close = close_model_names(model_name)
            hint = f"did you mean: {', '.join('timm/' + c for c in close)}? " if close else ""
            raise BackboneNotFound(
                f"unknown timm model {model_name!r}; {hint}see timm.list_models() for every name"
            )
        self.model_name = model_name
        self.weights = str(Path(weights).resolve()) if weights is not None else None
        self.pretrained = bool(pretrained) and self.weights is None
        self.model = self._create()
        if self.weights is not None:
            remapped = load_weights(self.model, self.weights, model_name)
            if remapped:
                warnings.warn(remapped, stacklevel=3)
        self.model.eval()
        self.layers = self._check_layers(layers)
        channels = [info["num_chs"] for info in self.model.feature_info]
        if self.layers is None:
            dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features
            segments = ()
        else:
            dim = sum(channels[i] for i in self.layers)
            # each stage's pooled width, named by its layers= index: probes split on them
            segments = tuple((f"stage{i}", int(channels[i])) for i in self.layers)
        self._info = BackboneInfo(
            name=f"timm/{model_name}",
            dim=int(dim),
            config={
                "pretrained": self.pretrained,
                "weights": self.weights,
                "layers": list(self.layers) if self.layers is not None else None,
            },
            segments=segments,
        )
        data_config = timm.data.resolve_model_data_config(self.model)
        self.transform = timm.data.create_transform(**data_config, is_training=False)
        # the eval transform resizes the shorter side to input / crop_pct, then crops
        side = min(data_config["input_size"][1:])
        self.decode_size = math.floor(side / data_config.get("crop_pct", 1.0))
        self._split_transform()

    def _create(self) -> torch.nn.Module:
        try:
            if self.pretrained:
                with model_building():  # its random init must not interleave with another's
                    return timm.create_model(self.model_name, pretrained=True)
            # random (or about to be replaced) weights, seeded from the name: every process
            # (and every Ray actor) builds the same model, so its latents can be queried
            with model_building(seed=name_seed(self.model_name)):
                model = timm.create_model(self.model_name, pretrained=False)
            if self.weights is None:
                warnings.warn(
                    f"timm/{self.model_name} with pretrained=False has random weights "
                    "(seeded by name): fine for timing and tests, not as features",
                    stacklevel=4,
                )
            return model
        except Exception as exc:
            if not self.pretrained:
                raise BackboneError(f"timm could not build {self.model_name!r}: {exc}") from exc
            raise BackboneError(
                f"could not fetch pretrained weights for timm/{self.model_name} "
                f"({type(exc).__name__}); without network access pass weights=FILE "
                "(a local .safetensors/.pth) or pretrained=False"
            ) from exc

    def _check_layers(self, layers: Sequence[int] | int | None) -> tuple[int, ...] | None:
        if layers is None:
            return None
        if isinstance(layers, str):
            layers = [part for part in layers.split(",") if part.strip()]
        elif isinstance(layers, int):
            layers = [layers]
        n = len(self.model.feature_info)
        valid = f"valid: 0..{n - 1} or -{n}..-1 (stages of {self.model_name})"
        chosen = []
        for raw in layers:
            try:
                index = int(raw)
            except (TypeError, ValueError):
                raise BackboneError(f"layers= entry {raw!r} is not an integer; {valid}") from None
            if not -n <= index < n:
                raise BackboneError(f"layers= index {index} is out of range; {valid}")
            chosen.append(index % n)
        if not chosen:
            raise BackboneError(f"layers= is empty; {valid}")
        return tuple(sorted(set(chosen)))

    @property
    def info(self) -> BackboneInfo:
        return self._info

    def identity_extra(self) -> dict[str, Any]:
        """timm's version and the weights' origin: a pretrained tag, a file, or the seed."""
        if self.weights is not None:
            origin = "file"
        elif self.pretrained:
            origin = self.model.pretrained_cfg.get("tag") or "default"
        else:
            origin = f"random:seed={name_seed(self.model_name)}"
        return {"timm": timm.__version__, "weights_origin": origin}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The model's eval transform; as ``uint8`` (resize and crop only) when the rest
        of it is the plain to-tensor and normalize that :meth:`finish_preprocess` does."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # no copy when RGB
        if self.pil_ops is None:
            return self.transform(rgb)
        return pil_to_tensor(self.pil_ops(rgb))

    def _split_transform(self) -> None:
        """Keep the PIL steps of the eval transform in the workers and do to-tensor and
        normalize in the model's process, if that gives the same input (checked)."""
        self.pil_ops = None
        steps = list(getattr(self.transform, "transforms", []))
        names = [type(t).__name__ for t in steps]
        if len(steps) < 2 or names[-1] != "Normalize" or names[-2] not in TO_TENSOR:
            return
        self.input_mean = tuple(float(v) for v in steps[-1].mean)
        self.input_std = tuple(float(v) for v in steps[-1].std)
        pil_ops = Compose(steps[:-2])
        probe = Image.fromarray(
            np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
        )
        split = self.finish_preprocess(pil_to_tensor(pil_ops(probe))[None])[0]
        if torch.allclose(split, self.transform(probe), atol=1e-5):
            self.pil_ops = _fused_if_same(pil_ops)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
        feats = self.model.forward_intermediates(
            batch, indices=list(self.layers), intermediates_only=True
        )
        return torch.cat([f.float().mean(dim=(2, 3)) for f in feats], dim=1)


def _fused_if_same(pil_ops: Compose) -> Compose | CropResize:
    """The resize and crop as one :class:`CropResize` (a third less resampling) when it
    gives the same pixels as ``pil_ops`` to within 2 in 255, on both orientations."""
    fused = fuse(pil_ops.transforms)
    if fused is None:
        return pil_ops
    rng = np.random.default_rng(1)
    for shape in ((300, 400, 3), (411, 287, 3)):
        probe = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        want = pil_to_tensor(pil_ops(probe)).int()
        got = pil_to_tensor(fused(probe)).int()
        if got.shape != want.shape or (got - want).abs().max() > 2:
            return pil_ops
    return fused
