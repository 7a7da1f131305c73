"""embedkit plugin: any timm model as a feature extractor, ``timm/<model name>``."""

from __future__ import annotations

from embedkit.hookspecs import hookimpl
from embedkit_timm.backbone import TimmBackbone, close_model_names

__all__ = ["TimmBackbone"]


@hookimpl
def register_backbones(register):
    register(
        "timm/",
        TimmBackbone,
        description="any timm model, e.g. timm/resnet50; options: pretrained, weights, layers",
        suggest=close_model_names,
    )
