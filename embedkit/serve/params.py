"""Query parameters of the API, parsed and range-checked: a missing, malformed or
out-of-range value is a 400 that names the parameter and what it takes."""

from __future__ import annotations

import math
from typing import Any

from embedkit.serve.responses import ApiError, short

__all__ = ["float_param", "int_param", "text_param"]

#: the longest text parameter taken (ids, column names, values)
MAX_TEXT = 4096


def _raw(source: Any, name: str) -> str | None:
    """The parameter from a request's query string, or from a mapping (form fields)."""
    params = getattr(source, "query_params", source)  # a Request is a Mapping (its scope)
    value = params.get(name)
    return None if value is None else str(value)


def int_param(source: Any, name: str, default: int, lo: int, hi: int) -> int:
    """An integer in ``lo..hi``; ``default`` when absent."""
    raw = _raw(source, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise ApiError(400, f"{name} must be an integer in {lo}..{hi}, got {short(raw)}")
    return value


def float_param(source: Any, name: str, default: float, lo: float, hi: float) -> float:
    """A finite number in ``[lo, hi]``; ``default`` when absent."""
    raw = _raw(source, name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ApiError(400, f"{name} must be a number in [{lo:g}, {hi:g}], got {short(raw)}")
    return value


def text_param(source: Any, name: str, allow_empty: bool = False) -> str:
    """A required text parameter (at most :data:`MAX_TEXT` characters)."""
    raw = _raw(source, name)
    if raw is None or (raw == "" and not allow_empty):
        raise ApiError(400, f"parameter {name!r} is required")
    if len(raw) > MAX_TEXT:
        raise ApiError(400, f"parameter {name!r} is longer than {MAX_TEXT} characters")
    return raw
