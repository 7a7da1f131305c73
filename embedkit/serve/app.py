"""The explorer's web app: the JSON API of docs/explorer.md over one latent dataset, and
the page in ``embedkit/serve/static/``. Routes parse and check their parameters, call
``state``/``search``/``edits`` and answer; every error is ``{"error": "one line"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from embedkit.algebra.projection import available_methods
from embedkit.errors import EmbedkitError, InputError
from embedkit.serve.edits import edit, interpolation
from embedkit.serve.export import export_bytes
from embedkit.serve.params import float_param, int_param, text_param
from embedkit.serve.responses import (
    LOCAL_HOSTS,
    ApiError,
    GuardMiddleware,
    error_body,
    jsonable,
    short,
)
from embedkit.serve.search import map_payload, neighbor_payload, query_payload
from embedkit.serve.state import ServeState
from embedkit.serve.thumbs import MAX_SIZE, MIN_SIZE, make_thumbnail
from embedkit.serve.upload import read_body, read_image_field
from embedkit.store.dataset import LatentDataset

if TYPE_CHECKING:
    from embedkit.plugins.backbone import Backbone

__all__ = ["MAX_K", "MAX_UPLOAD_BYTES", "STATIC", "create_app"]

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_K = 200
MAX_PAGE = 1000
MAX_MAP = 200_000
MAX_STEPS = 32
MAX_ALPHA = 10.0
log = logging.getLogger("embedkit.serve")


def _state(request: Request) -> ServeState:
    return request.app.state.explorer


def index_page(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        raise ApiError(404, "the explorer page is not installed (embedkit/serve/static/)")
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


def info(request: Request) -> JSONResponse:
    state = _state(request)
    version = state.current()
    ds, table, index = version.ds, version.table, state.index_info(version)
    backbone = {"name": ds.backbone.name, "dim": ds.backbone.dim, "config": ds.backbone.config}
    return JSONResponse(
        {
            "name": state.name,
            "path": str(state.path),
            "rows": table.rows,
            "dim": ds.dim,
            "backbone": jsonable(backbone),
            "metric": state.metric(version),
            "index": None if index is None else {"kind": index.kind, "factory": index.factory},
            "decodes": state.decodes(),
            "columns": [{"name": c, "values": table.distinct(c)} for c in table.labels],
            "map_methods": available_methods(),
            "fingerprint": version.fingerprint,
            "max_upload_bytes": request.app.state.max_upload_bytes,
        }
    )


def items(request: Request) -> JSONResponse:
    offset = int_param(request, "offset", 0, 0, 10**12)
    limit = int_param(request, "limit", 60, 1, MAX_PAGE)
    q = request.query_params.get("q", "")
    filters: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("f."):
            filters.setdefault(key[2:], []).append(value)
    total, found = _state(request).current().table.page(offset, limit, q, filters)
    return JSONResponse({"total": total, "offset": offset, "limit": limit, "items": found})


def thumb(request: Request) -> Response:
    id_ = request.path_params["id"]
    size = int_param(request, "size", 128, MIN_SIZE, MAX_SIZE)
    version = _state(request).current()
    tag = hashlib.sha256(id_.encode()).hexdigest()[:16]
    headers = {"ETag": f'"{version.fingerprint}-{tag}-{size}"', "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    data = version.thumbs.get(id_, size)
    if data is None:
        source = version.table.source_of(version.row_of(id_))
        if source is None:
            raise ApiError(404, f"id {short(id_)} has no source image")
        try:
            data = make_thumbnail(source, size)
        except Exception:  # missing, moved or unreadable: the one line is what matters
            raise ApiError(404, f"the image of id {short(id_)} cannot be read") from None
        version.thumbs.put(id_, size, data)
    return Response(data, media_type="image/jpeg", headers=headers)


def neighbors_route(request: Request) -> JSONResponse:
    id_ = text_param(request, "id")
    k = int_param(request, "k", 12, 1, MAX_K)
    return JSONResponse(neighbor_payload(_state(request), id_, k))


async def query(request: Request) -> JSONResponse:
    data, fields = await read_image_field(request, request.app.state.max_upload_bytes)
    k = int_param(request, "k", int_param(fields, "k", 12, 1, MAX_K), 1, MAX_K)
    return JSONResponse(await run_in_threadpool(query_payload, _state(request), data, k))


def map_route(request: Request) -> JSONResponse:
    color = request.query_params.get("color") or None
    limit = int_param(request, "limit", 20_000, 1, MAX_MAP)
    method = request.query_params.get("method") or "pca"
    if method not in available_methods():
        raise ApiError(
            400,
            f"map method {short(method)} is not available here; use one of "
            f"{', '.join(available_methods())} (umap needs umap-learn)",
        )
    return JSONResponse(map_payload(_state(request), color, limit, method))


async def export(request: Request) -> Response:
    body = await read_body(request, request.app.state.max_upload_bytes)
    try:
        asked = json.loads(body)
    except ValueError:
        raise ApiError(400, 'send JSON: {"ids": [...], "format": "csv"|"parquet"}') from None
    ids = asked.get("ids") if isinstance(asked, dict) else None
    fmt = asked.get("format", "csv") if isinstance(asked, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "'ids' must be a list of id strings")
    if fmt not in ("csv", "parquet"):
        raise ApiError(400, f"format must be csv or parquet, not {short(fmt)}")
    state = _state(request)
    data = await run_in_threadpool(export_bytes, state.current().table, ids, fmt)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", state.name)[:60] or "latents"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/vnd.apache.parquet"
    disposition = f'attachment; filename="{name}-selection.{fmt}"'
    return Response(data, media_type=media, headers={"Content-Disposition": disposition})


def edit_route(request: Request) -> Response:
    id_, column = text_param(request, "id"), text_param(request, "column")
    value = text_param(request, "value", allow_empty=True)
    alpha = float_param(request, "alpha", 1.0, -MAX_ALPHA, MAX_ALPHA)
    k = int_param(request, "k", 12, 1, MAX_K)
    result = edit(_state(request), id_, column, value, alpha, k)
    if isinstance(result, bytes):
        return Response(result, media_type="image/png", headers={"Cache-Control": "no-store"})
    return JSONResponse(result)


def interpolate_route(request: Request) -> JSONResponse:
    a, b = text_param(request, "a"), text_param(request, "b")
    steps = int_param(request, "steps", 8, 2, MAX_STEPS)
    mode = request.query_params.get("mode", "slerp")
    if mode not in ("lerp", "slerp"):
        raise ApiError(400, f"mode must be lerp or slerp, not {short(mode)}")
    k = int_param(request, "k", 1, 1, MAX_K)
    return JSONResponse(interpolation(_state(request), a, b, steps, mode, k))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=status)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail and exc.status_code != 404 else "not found"
    return JSONResponse(error_body(str(detail)), status_code=exc.status_code, headers=exc.headers)


async def _embedkit_error(request: Request, exc: Exception) -> JSONResponse:
    """A library refusal: bad input is the client's (400); a backbone or plugin that
    cannot run here is the server's (503)."""
    return _error(400 if isinstance(exc, InputError) else 503, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _static() -> Mount:
    if STATIC.is_dir():
        return Mount("/static", app=StaticFiles(directory=STATIC), name="static")

    async def missing(scope: dict, receive: Any, send: Any) -> None:
        raise HTTPException(404)

    return Mount("/static", app=missing, name="static")


ROUTES = [
    Route("/", index_page),
    Route("/api/info", info),
    Route("/api/items", items),
    Route("/api/thumb/{id:path}", thumb),
    Route("/api/neighbors", neighbors_route),
    Route("/api/query", query, methods=["POST"]),
    Route("/api/map", map_route),
    Route("/api/export", export, methods=["POST"]),
    Route("/api/edit", edit_route),
    Route("/api/interpolate", interpolate_route),
]


def create_app(
    latents: str | Path | LatentDataset,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    allowed_hosts: tuple[str, ...] | list[str] | None = LOCAL_HOSTS,
    backbone: Backbone | None = None,
) -> Starlette:
    """The explorer app over one latent dataset (opened now: a bad folder fails here).

    Args:
        latents: the latent dataset folder (or an unfiltered :class:`LatentDataset`).
        max_upload_bytes: the largest image ``POST /api/query`` takes (413 beyond), and
            the largest JSON body ``POST /api/export`` takes.
        allowed_hosts: Host header names answered (None: any); the default answers
            only requests addressed to the loopback (127.0.0.1, localhost, ::1).
        backbone: the backbone of the latents, when already loaded (else loaded on
            first use).

    Example:
        >>> app = create_app("latents/")
        >>> # uvicorn.run(app, host="127.0.0.1", port=8765)
    """
    state = ServeState(latents, backbone=backbone)
    handlers: dict[Any, Any] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        EmbedkitError: _embedkit_error,
        Exception: _unexpected,
    }
    app = Starlette(
        routes=[*ROUTES, _static()],
        exception_handlers=handlers,
        middleware=[Middleware(GuardMiddleware, allowed_hosts=allowed_hosts)],
    )
    app.state.explorer = state
    app.state.max_upload_bytes = int(max_upload_bytes)
    return app
