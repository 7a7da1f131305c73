"""Uploads: a request body read with a bound (413 past it, before it is all read), the
multipart ``image`` field taken out of it, and decoded by the one image decoder (415
for a file that is not an image)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from embedkit.images.decode import load_image
from embedkit.serve.responses import ApiError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from PIL import Image
    from starlette.requests import Request

__all__ = ["MAX_PIXELS", "MULTIPART_SLACK", "decode_upload", "read_body", "read_image_field"]

#: bytes a multipart body may hold beyond the file: boundaries, headers, small fields
MULTIPART_SLACK = 64 * 1024
#: an upload decoding to more pixels than this is refused before it is decoded
MAX_PIXELS = 64_000_000


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the upload is larger than {limit:,} bytes; send a smaller file")


async def _bounded(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, stopping with 413 as soon as more than ``limit`` bytes came."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        yield chunk


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond)."""
    _check_length(request, limit)
    return b"".join([chunk async for chunk in _bounded(request, limit)])


async def read_image_field(request: Request, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the multipart field ``image`` (at most ``max_bytes``) and the other
    (text) fields."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send the image as multipart/form-data in a field named 'image'")
    limit = max_bytes + MULTIPART_SLACK
    _check_length(request, limit)
    parser = MultiPartParser(request.headers, _bounded(request, limit), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"cannot read the multipart body: {exc.message}") from None
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "no file in the multipart field 'image'")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return data, fields
    finally:
        await form.close()


def decode_upload(data: bytes, min_side: int | None = None) -> Image.Image:
    """The uploaded bytes as an RGB image, through :func:`embedkit.load_image` (EXIF
    rotation, transparency onto white, 16-bit, palette); 415 when they are no image."""
    from PIL import Image

    if not data:
        raise ApiError(415, "the upload is empty; send a PNG, JPEG, WebP, ... image")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
        if width * height > MAX_PIXELS:
            raise ApiError(413, f"the image is {width}x{height} pixels; at most {MAX_PIXELS:,}")
        return load_image(io.BytesIO(data), min_side=min_side)
    except ApiError:
        raise
    except Exception as exc:  # PIL raises many types for bad files; the client needs one line
        raise ApiError(
            415, f"the upload is not an image this server can read ({type(exc).__name__})"
        ) from None
