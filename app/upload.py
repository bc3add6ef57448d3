"""Reading images (multipart, raw ``image/*`` body, or JSON with base64) and videos out of a request.

Bodies are read into memory with a hard size limit while streaming (a larger body is refused before
it is all received), and multipart is parsed in memory: unlike Starlette's form parser, nothing is
spooled to a temporary file, so no uploaded image ever touches the disk.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import anyio.to_thread
from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from app.disconnect import client_gone
from app.errors import ApiError

# Media types of a raw body (and their aliases) that the decoder handles.
IMAGE_TYPES = {
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "image/mpo",
}
RAW_TYPES = IMAGE_TYPES | {"application/octet-stream"}
FILE_FIELDS = {"image", "file", "images", "files", "images[]", "files[]", "video"}
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def too_large(what: str, limit: int, setting: str) -> ApiError:
    return ApiError(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes ({setting})")


async def read_body(request: Request, limit: int, setting: str) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise too_large(f"the request body ({int(length)} bytes)", limit, setting)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_large("the request body", limit, setting)
            chunks.append(chunk)
    except ClientDisconnect:  # an upload cut off: not a server error
        raise client_gone() from None
    return b"".join(chunks)


# Most parts of a multipart body (files and fields): a request has a few; millions of empty ones cost seconds of
# parsing and gigabytes of memory.
MAX_PARTS = 64
# Most JSON values (objects, arrays, commas: counted before parsing) of a JSON body: a request has a few dozen.
MAX_JSON_VALUES = 1000


class _TooManyParts(Exception):
    pass


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str | None, bytes]]:
    """(field name, bytes) of every file part of a multipart/form-data body, in order. CPU-bound on a large body:
    call it in a worker thread, not on the event loop."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "multipart/form-data without a boundary parameter")
    parts: list[tuple[dict[str, bytes], bytes]] = []
    state: dict = {}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise _TooManyParts
        state.update(headers={}, field=bytearray(), value=bytearray(), data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][bytes(state["field"]).decode("latin-1").lower()] = bytes(state["value"])
        state["field"], state["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((state["headers"], b"".join(state["data"])))

    def on_end() -> None:
        state["ended"] = True

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_end": on_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except _TooManyParts:
        raise ApiError(
            413, "too_many_parts", f"the multipart body has over {MAX_PARTS} parts; the limit is {MAX_PARTS}"
        ) from None
    except (MultipartParseError, ValueError) as exc:
        raise ApiError(400, "invalid_multipart", f"the multipart body could not be parsed: {exc}") from None
    if not state.get("ended"):  # a cut-off body: its last part would be lost without a word
        raise ApiError(
            400,
            "invalid_multipart",
            f"the multipart body is truncated: it has no closing boundary (--{boundary.decode('latin-1')}--)",
        )
    files: list[tuple[str | None, bytes]] = []
    for headers, data in parts:
        _, disp = parse_options_header(headers.get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace") or None
        is_file = b"filename" in disp or (name or "").lower() in FILE_FIELDS
        if is_file:
            files.append((name, data))
    return files


def decode_base64(text: str, limit: int, where: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(400, "invalid_base64", f"{where} must be a base64 string")
    if re.match(r"(?i)\s*(https?|ftp|file)://", text):  # the service fetches nothing: say so, not "bad base64"
        raise ApiError(
            400, "invalid_base64", f"{where} is a URL; the service fetches nothing: send the image's bytes in base64"
        )
    text = _DATA_URL.sub("", text.strip(), count=1)
    text = "".join(text.split())
    if len(text) * 3 // 4 > limit + 3:
        raise too_large(f"{where} (about {len(text) * 3 // 4} bytes decoded)", limit, "max_image_bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # the URL-safe alphabet is common too
            data = base64.b64decode(text.translate(str.maketrans("-_", "+/")), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "invalid_base64", f"{where} is not valid base64: {exc}") from None
    return data


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(
    request: Request, *, max_images: int, max_image_bytes: int, body_limit: int, body_setting: str
) -> list[bytes]:
    """The image files of a prediction request (1 for single, up to ``max_images`` for batch)."""
    ctype = media_type(request)
    batch = max_images > 1
    if ctype in RAW_TYPES or ctype == "":
        if batch:
            raise ApiError(
                415,
                "unsupported_media_type",
                'a batch needs multipart/form-data (several files) or JSON {"images": [...]}',
            )
        body = await read_body(request, max_image_bytes, "max_image_bytes")
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty: send an image file")
        return [body]
    if ctype.startswith("image/"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"image type {ctype} is not supported; send one of: {', '.join(sorted(IMAGE_TYPES))}",
        )
    if ctype == "multipart/form-data":
        body = await read_body(request, body_limit, body_setting)
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty: send an image file")
        files = await anyio.to_thread.run_sync(parse_multipart, body, request.headers["content-type"])
        if not files:
            raise ApiError(
                400, "missing_image", "the multipart body has no file part (send the photo as field 'image')"
            )
        images = [data for _, data in files]
    elif ctype == "application/json" or ctype.endswith("+json"):
        body = await read_body(request, body_limit, body_setting)
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty: send JSON with a base64 image")
        payload = await anyio.to_thread.run_sync(_parse_json, body)
        images = _json_images(payload, batch, max_image_bytes)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {ctype or 'none'} is not supported; send multipart/form-data, an image/* body "
            "or application/json with base64",
        )
    if len(images) > max_images:
        if batch:
            raise ApiError(
                413,
                "too_many_images",
                f"{len(images)} images in one batch; the limit is {max_images} (max_batch_images)",
            )
        raise ApiError(
            413,
            "too_many_images",
            f"{len(images)} files sent to a route that takes one image; send several to /v1/predictions:batch",
        )
    for i, data in enumerate(images):
        if len(data) > max_image_bytes:
            where = f"image {i}" if batch else "the image"
            raise too_large(f"{where} ({len(data)} bytes)", max_image_bytes, "max_image_bytes")
    return images


def _parse_json(body: bytes) -> object:
    """The JSON of a request body, refused before parsing when it holds more values than a request has (a body of
    millions of empty objects parses into gigabytes). Base64 holds no ``{``, ``[`` or ``,``."""
    values = body.count(b"{") + body.count(b"[") + body.count(b",")
    if values > MAX_JSON_VALUES:
        raise ApiError(
            413,
            "too_many_json_values",
            f"the JSON body has {values} objects, arrays and commas; the limit is {MAX_JSON_VALUES}",
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # also: nested too deep, an integer of too many digits
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


def _json_images(payload: object, batch: bool, max_image_bytes: int) -> list[bytes]:
    from app.schemas import BatchPredictionRequest, PredictionRequest

    try:
        if batch:
            req = BatchPredictionRequest.model_validate(payload)
            texts = req.images
        else:
            texts = [PredictionRequest.model_validate(payload).image]
    except ValidationError as exc:
        field = "images" if batch else "image"
        raise ApiError(
            422,
            "invalid_request",
            f'JSON body must be {{"{field}": ...}} with base64 image data: {exc.errors()[0]["msg"]}',
        ) from None
    if batch and not texts:
        raise ApiError(400, "missing_image", "the batch has no images")
    return [decode_base64(t, max_image_bytes, f"images[{i}]" if batch else "image") for i, t in enumerate(texts)]


# Media types of a raw video body.
VIDEO_TYPES = {
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "video/x-matroska",
    "video/x-msvideo",
    "video/avi",
    "application/octet-stream",
}


async def read_video(request: Request, max_video_bytes: int) -> bytes:
    """The video file of a request: a raw ``video/*`` body or a multipart file part (field ``video``)."""
    ctype = media_type(request)
    if ctype in VIDEO_TYPES or ctype == "":
        data = await read_body(request, max_video_bytes, "max_video_bytes")
    elif ctype == "multipart/form-data":
        body = await read_body(request, max_video_bytes + 64 * 1024, "max_video_bytes")
        files = await anyio.to_thread.run_sync(parse_multipart, body, request.headers["content-type"]) if body else []
        if body and not files:
            raise ApiError(
                400, "missing_video", "the multipart body has no file part (send the video as field 'video')"
            )
        named = [f for f in files if f[0] == "video"] or files
        if len(named) > 1:
            raise ApiError(
                413, "too_many_videos", f"{len(named)} file parts; send one video (as field 'video') per request"
            )
        data = named[0][1] if named else b""
        if len(data) > max_video_bytes:
            raise too_large(f"the video ({len(data)} bytes)", max_video_bytes, "max_video_bytes")
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {ctype} is not supported for a video; send the file as the body "
            f"({', '.join(sorted(VIDEO_TYPES))}) or as multipart/form-data",
        )
    if not data:
        raise ApiError(400, "empty_body", "the request body is empty: send a video file")
    return data
