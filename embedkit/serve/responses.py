"""What every response of the explorer shares: the one-line JSON error, JSON-safe values,
and the guard in front of the app (allowed Host headers, security headers)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "LOCAL_HOSTS",
    "SECURITY_HEADERS",
    "ApiError",
    "GuardMiddleware",
    "error_body",
    "jsonable",
    "short",
]

#: Host headers a server bound to the loopback answers (a DNS-rebinding page names its own)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the page loads its script and styles from /static only; nothing may frame it
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
        b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
)


class ApiError(Exception):
    """A request the API refuses: an HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())


def short(value: Any, limit: int = 120) -> str:
    """``repr`` of a client-sent value, cut to ``limit`` characters for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every error: ``{"error": "one line"}``."""
    return {"error": " ".join(str(message).split()) or "error"}


def jsonable(value: Any) -> Any:
    """A value from Arrow, pandas or numpy as plain JSON: NaN and inf become null, dates
    ISO strings, numpy scalars Python ones, anything else its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _host_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # [::1]:8765
                return host[1 : host.find("]")] if "]" in host else host
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


class GuardMiddleware:
    """Refuses requests whose Host header is not one of ``allowed_hosts`` (None: any), so
    a web page that rebinds its own name to 127.0.0.1 cannot read the API; adds
    :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Any, allowed_hosts: Iterable[str] | None = LOCAL_HOSTS):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _host_of(scope.get("headers", ()))
        if self.allowed is not None and host not in self.allowed:
            await _refuse(send, host)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Any, host: str) -> None:
    import json

    body = json.dumps(
        error_body(
            f"host {host[:100]!r} is not allowed: this server answers on 127.0.0.1/localhost "
            "only (start it with --host 0.0.0.0 to listen beyond this machine)"
        )
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
