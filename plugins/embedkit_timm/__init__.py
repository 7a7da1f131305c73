"""embedkit plugin: any timm model as a feature extractor, ``timm/<model name>``.

This module is imported whenever embedkit loads its plugins (``embedkit --help``
included), so it imports neither timm nor torch: the backbone class is imported
when a ``timm/`` backbone is first built.
"""

from __future__ import annotations

from typing import Any

from embedkit.plugins.hookspecs import hookimpl

__all__ = ["TimmBackbone"]


def build(model_name: str, **options: Any) -> Any:
    """Factory for the ``timm/`` prefix."""
    from embedkit_timm.backbone import TimmBackbone

    return TimmBackbone(model_name, **options)


def suggest(name: str) -> list[str]:
    """timm model names close to ``name`` (for "did you mean")."""
    from embedkit_timm.backbone import close_model_names

    return close_model_names(name)


def __getattr__(name: str) -> Any:
    if name == "TimmBackbone":
        from embedkit_timm.backbone import TimmBackbone

        return TimmBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_backbones(register):
    register(
        "timm/",
        build,
        description="any timm model, e.g. timm/resnet50; options: pretrained, weights, layers",
        suggest=suggest,
        options=("pretrained", "weights", "layers"),
    )
