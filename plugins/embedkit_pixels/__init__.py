"""embedkit plugin: ``pixels`` — downsampled raw pixels, a fast baseline encoder with no weights.

Imported whenever embedkit loads its plugins, so torch is imported only when a
``pixels`` backbone is built.
"""

from __future__ import annotations

from typing import Any

from embedkit.plugins.hookspecs import hookimpl

__all__ = ["PixelsBackbone"]


def build(**options: Any) -> Any:
    """Factory for ``pixels``."""
    from embedkit_pixels.backbone import PixelsBackbone

    return PixelsBackbone(**options)


def __getattr__(name: str) -> Any:
    if name == "PixelsBackbone":
        from embedkit_pixels.backbone import PixelsBackbone

        return PixelsBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_backbones(register):
    register(
        "pixels", build, description="downsampled raw pixels (option: size=8)", options=("size",)
    )
