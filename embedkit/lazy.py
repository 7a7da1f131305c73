"""Lazy re-exports (PEP 562): a package names its public objects without importing them.

``import embedkit`` must stay cheap (no torch, faiss or pyarrow), so every package
``__init__`` lists what it exports and where it lives; the module is imported on
first attribute access, the way ``lazy_loader.attach`` (SPEC 1) does it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, exports: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        exports: ``{module (relative to the package, or absolute): [names it defines]}``.

    Example:
        >>> __getattr__, __dir__, __all__ = attach(__name__, {"dataset": ["open_latents"]})
    """
    where = {
        name: module if "." in module else f"{package}.{module}"
        for module, names in exports.items()
        for name in names
    }

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)  # later lookups are direct
        return value

    def __dir__() -> list[str]:  # pluggy finds hook implementations through dir()
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
