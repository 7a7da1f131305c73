"""Exceptions raised by embedkit. Each carries a one-line message fit to show a user."""

from __future__ import annotations

__all__ = [
    "BackboneError",
    "BackboneNotFound",
    "EmbedkitError",
    "InputError",
    "PluginError",
    "first_line",
]


class EmbedkitError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class InputError(EmbedkitError):
    """Bad input data: a missing file, column, or a value of the wrong shape."""


class BackboneNotFound(EmbedkitError):
    """No registered backbone matches the requested name."""


class BackboneError(EmbedkitError):
    """A backbone could not be built or used (weights, options, architecture)."""


class PluginError(EmbedkitError):
    """A plugin failed to load or to run one of its hooks."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name if it has none), for
    folding a library's error into one of our one-line messages."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line
