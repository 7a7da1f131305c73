"""The plugin manager: every module in the ``embedkit`` entry-point group is a plugin.

First-party plugins (``plugins/embedkit_timm``, ``plugins/embedkit_vae``) are
registered through that same group in pyproject.toml. A plugin that fails to
import, or whose hook raises, is recorded in :func:`broken_plugins` and the
others carry on. ``EMBEDKIT_LOAD_PLUGINS=timm,vae`` loads only the plugins named
(an empty value loads none) — handy for tests and debugging.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from embedkit.plugins import hookspecs

__all__ = [
    "call_hook",
    "get_plugin_manager",
    "plugin_failures",
    "plugin_names",
    "reset_plugins",
]

_state: dict[str, Any] = {"pm": None, "broken": {}}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("embedkit")
    pm.add_hookspecs(hookspecs)
    return pm


def _wanted() -> set[str] | None:
    value = os.environ.get("EMBEDKIT_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager, broken: dict[str, str]) -> None:
    importlib.invalidate_caches()
    wanted = _wanted()
    for ep in entry_points(group="embedkit"):
        if (wanted is not None and ep.name not in wanted) or pm.has_plugin(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            broken[ep.name] = f"failed to load ({ep.value}): {type(exc).__name__}: {exc}"


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    if _state["pm"] is None:
        pm = _new_manager()
        _load_entry_points(pm, _state["broken"])
        _state["pm"] = pm
    return _state["pm"]


def reset_plugins() -> None:
    """Forget loaded plugins; the next use rediscovers entry points (tests, notebooks).

    Whatever was derived from the plugins (the backbone registry) is keyed on the
    manager object, so a new manager invalidates it.
    """
    _state["pm"] = None
    _state["broken"] = {}


def plugin_failures() -> dict[str, str]:
    """Plugins that failed so far, to load or in a hook call: ``{plugin name: error}``."""
    return dict(_state["broken"])


def plugin_names() -> list[str]:
    """Names of the plugins that loaded."""
    return sorted(name for name, _ in get_plugin_manager().list_name_plugin())


def call_hook(name: str, kwargs_for: Callable[[str], dict[str, Any]]) -> None:
    """Call hook ``name`` on each plugin separately so one failure stays contained.

    ``kwargs_for(plugin_name)`` builds that plugin's keyword arguments, which lets
    ``register`` callables know who is registering.
    """
    pm = get_plugin_manager()
    for impl in getattr(pm.hook, name).get_hookimpls():
        try:
            impl.function(**kwargs_for(impl.plugin_name))
        except Exception as exc:
            _state["broken"][impl.plugin_name] = f"hook {name} failed: {type(exc).__name__}: {exc}"
