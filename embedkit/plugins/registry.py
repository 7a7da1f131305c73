"""One factory for every backbone: ``load_backbone("timm/resnet18")`` or ``("vae:runs/x")``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedkit.errors import BackboneError, BackboneNotFound, PluginError, first_line
from embedkit.plugins.info import BackboneInfo
from embedkit.plugins.manager import call_hook, get_plugin_manager, plugin_failures

if TYPE_CHECKING:  # the base class imports torch; the registry must not
    from embedkit.plugins.backbone import Backbone

__all__ = ["BackboneEntry", "broken_plugins", "list_backbones", "load_backbone", "provider"]

PREFIX_SEPARATORS = ("/", ":")
#: options every backbone takes: where it runs, not what it computes
PLACEMENT_OPTIONS = frozenset({"device", "autocast"})


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone name (or prefix) and the plugin that provides it."""

    name: str
    factory: Callable[..., Backbone]
    plugin: str
    description: str = ""
    suggest: Callable[[str], list[str]] | None = None
    options: tuple[str, ...] | None = None

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(PREFIX_SEPARATORS)

    def declared_options(self) -> set[str] | None:
        """The option names this backbone takes: those registered with it, else its
        factory's named parameters; None when neither tells (a ``**options`` factory)."""
        if self.options is not None:
            return set(self.options) | PLACEMENT_OPTIONS
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name for p in params if p.kind in named}


# (plugin manager, its entries): a reset manager (reset_plugins) means a fresh registry
_cache: list[tuple[object, dict[str, BackboneEntry]]] = []


def _collect() -> dict[str, BackboneEntry]:
    entries: dict[str, BackboneEntry] = {}

    def kwargs_for(plugin: str) -> dict[str, Any]:
        def register(
            name: str,
            factory: Callable[..., Backbone],
            description: str = "",
            suggest: Callable[[str], list[str]] | None = None,
            options: tuple[str, ...] | list[str] | None = None,
        ) -> None:
            if name in entries:
                other = entries[name].plugin
                raise PluginError(f"backbone {name!r} is already registered by plugin {other!r}")
            declared = tuple(options) if options is not None else None
            entries[name] = BackboneEntry(name, factory, plugin, description, suggest, declared)

        return {"register": register}

    call_hook("register_backbones", kwargs_for)
    return entries


def _entries() -> dict[str, BackboneEntry]:
    pm = get_plugin_manager()
    if not _cache or _cache[0][0] is not pm:
        _cache[:] = [(pm, _collect())]
    return _cache[0][1]


def broken_plugins() -> dict[str, str]:
    """Plugins that failed to load or to register backbones: ``{plugin name: error}``."""
    _entries()  # runs register_backbones, recording plugins whose hook fails
    return plugin_failures()


def list_backbones() -> list[BackboneEntry]:
    """Every registered backbone name or prefix, sorted by name."""
    return sorted(_entries().values(), key=lambda e: e.name)


def load_backbone(name: str | BackboneInfo, **options: Any) -> Backbone:
    """Build a backbone by name, e.g. ``load_backbone("timm/resnet18", layers=[2, 3])``.

    Args:
        name: an exact registered name, ``<prefix><rest>`` for a prefix
            (``timm/convnext_tiny``, ``vae:runs/shapes``), or a :class:`BackboneInfo`
            read from a latent dataset: its config supplies the options (only options the
            backbone declares are accepted from it), and the weights loaded must be the
            ones its identity records.
        options: keyword options for the backbone's factory (``device=...`` etc.).
    """
    info = name if isinstance(name, BackboneInfo) else None
    name = info.name if info is not None else name
    entry, args = _resolve(name)
    if info is not None:
        _check_stored_options(entry, info)
        options = {**info.config, **options}
    backbone = _build(name, entry.factory, args, options)
    if info is not None:
        _check_weights(backbone, info)
    return backbone


def _resolve(name: str) -> tuple[BackboneEntry, tuple[str, ...]]:
    """The entry that builds ``name`` and the positional arguments its factory takes."""
    entries = _entries()
    if name in entries and not entries[name].is_prefix:
        return entries[name], ()
    prefixes = [e for e in entries.values() if e.is_prefix and name.startswith(e.name)]
    if not prefixes:
        raise BackboneNotFound(_not_found_message(name, entries))
    entry = max(prefixes, key=lambda e: len(e.name))
    rest = name[len(entry.name) :]
    if not rest:
        raise BackboneNotFound(
            f"backbone {name!r} needs a name after the prefix, e.g. {entry.name}<name>"
        )
    return entry, (rest,)


def provider(name: str) -> str | None:
    """The plugin that registers backbone ``name`` (None when no plugin does)."""
    try:
        return _resolve(name)[0].plugin
    except BackboneNotFound:
        return None


def _check_stored_options(entry: BackboneEntry, info: BackboneInfo) -> None:
    """Options read from a dataset's metadata (which may come from anyone) must be ones
    the backbone declares."""
    declared = entry.declared_options() or set()
    unknown = sorted(set(info.config) - declared)
    if unknown:
        raise BackboneError(
            f"the latents' metadata passes option {unknown[0]!r} to backbone {info.name!r}, "
            f"which does not declare it (declared: {', '.join(sorted(declared)) or 'none'}); "
            "refusing to build it from untrusted metadata (plugins declare options with "
            "register(..., options=[...]))"
        )


def _check_weights(backbone: Backbone, info: BackboneInfo) -> None:
    """The rebuilt backbone must run the weights that made the latents."""
    recorded = info.identity.get("weights")
    if recorded is not None and backbone.weights_digest() != recorded:
        raise BackboneError(
            f"backbone {info.name!r} now loads other weights than the ones that made these "
            f"latents (sha256 {backbone.weights_digest()[:12]} vs {str(recorded)[:12]}); "
            "restore those weights, or re-embed with the new ones into a new folder"
        )


def _build(name: str, factory: Callable[..., Backbone], args: tuple, options: dict) -> Backbone:
    try:
        return factory(*args, **options)
    except (TypeError, ValueError) as exc:  # bad option names or values from the user
        raise BackboneError(
            f"cannot build backbone {name!r} with options {options}: {first_line(exc)}; "
            "check the option names and values"
        ) from exc


def _not_found_message(name: str, entries: dict[str, BackboneEntry]) -> str:
    candidates = [e.name for e in entries.values() if not e.is_prefix]
    for entry in entries.values():
        if entry.is_prefix and entry.suggest is not None:
            candidates += [entry.name + s for s in entry.suggest(name.split("/")[-1])]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    known = ", ".join(e.name for e in sorted(entries.values(), key=lambda e: e.name)) or "none"
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    return f"unknown backbone {name!r}; {hint}registered: {known} (see `embedkit backbones`)"
