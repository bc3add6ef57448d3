"""POST /v1/predictions and POST /v1/predictions:batch."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Query, Request

from app.disconnect import until_disconnected
from app.errors import ApiError
from app.request_id import current_request_id
from app.schemas import (
    BatchItem,
    BatchPredictionRequest,
    BatchResponse,
    ErrorDetail,
    PredictionRequest,
    PredictionResponse,
    error_responses,
)
from app.upload import read_images

log = logging.getLogger("app")

router = APIRouter(tags=["predictions"])

_ERRORS = error_responses(
    {
        400: "empty body, not an image, corrupt or truncated image, bad base64 or JSON",
        401: "missing or wrong API key (when one is configured)",
        413: "body over max_image_bytes, image over max_pixels, or too many images",
        415: "unsupported content type or image format",
        422: "invalid parameters",
        429: "rate limit exceeded (Retry-After)",
        500: "inference failed for this image (the error is logged; the service goes on)",
        503: "not ready, or the queue is full (Retry-After)",
    }
)

_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": PredictionRequest.model_json_schema()},
    },
}

_BATCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["images"],
            }
        },
        "application/json": {"schema": BatchPredictionRequest.model_json_schema()},
    },
}

MASK_QUERY = Query(True, description="include each face's motion mask as base64 PNG")
MAX_FACES_QUERY = Query(None, ge=1, description="classify at most this many (largest) faces; capped by max_faces")
KEEP_QUERY = Query(
    True,
    description="false: nothing is kept once the answer is sent: no id, overlay_url, mask_url or expires_at (for "
    "a live camera's frames, or a photo that must not stay in memory)",
)
DETECT_QUERY = Query(
    True,
    description="false: the image is already one face crop, tight and upright like FER2013's or CK+48's; it is "
    "classified whole (its centre square), with no detection or alignment: what `fmpn evaluate` scores on such "
    "crops. The face's box is then the whole image and its score and landmarks are null",
)


@router.post(
    "/v1/predictions",
    response_model=PredictionResponse,
    response_model_exclude_none=False,
    summary="Detect faces in one photo and predict each face's expression and motion mask",
    description=(
        "Send the photo as a multipart upload (field `image`), as a raw `image/*` body, or as JSON "
        '`{"image": "<base64>"}`. Faces are ordered largest first and indexed from 0. The result is kept '
        "in memory for `result_ttl_s` seconds under `id` for the overlay and mask GETs, unless `keep=false`."
    ),
    responses=_ERRORS,
    openapi_extra={"requestBody": _IMAGE_BODY},
)
async def create_prediction(
    request: Request,
    mask: bool = MASK_QUERY,
    max_faces: int | None = MAX_FACES_QUERY,
    detect: bool = DETECT_QUERY,
    keep: bool = KEEP_QUERY,
) -> PredictionResponse:
    service = request.app.state.service
    settings = request.app.state.settings
    service.require_ready()
    (data,) = await read_images(
        request,
        max_images=1,
        max_image_bytes=settings.max_image_bytes,
        body_limit=settings.max_body_bytes,
        body_setting="max_image_bytes",
    )
    return await until_disconnected(
        request,
        service.predict(
            data, include_mask=mask, max_faces=max_faces, base_path="/v1/predictions", detect=detect, keep=keep
        ),
    )


@router.post(
    "/v1/predictions:batch",
    response_model=BatchResponse,
    summary="Several photos in one call",
    description=(
        'Multipart with several file parts (field `images`), or JSON `{"images": ["<base64>", ...]}`; at most '
        "`max_batch_images`. Each image gets its own result (and id) or its own error, in order."
    ),
    responses=_ERRORS,
    openapi_extra={"requestBody": _BATCH_BODY},
)
async def create_batch(
    request: Request,
    mask: bool = MASK_QUERY,
    max_faces: int | None = MAX_FACES_QUERY,
    detect: bool = DETECT_QUERY,
    keep: bool = KEEP_QUERY,
) -> BatchResponse:
    service = request.app.state.service
    settings = request.app.state.settings
    service.require_ready()
    images = await read_images(
        request,
        max_images=settings.max_batch_images,
        max_image_bytes=settings.max_image_bytes,
        body_limit=settings.max_batch_body_bytes,
        body_setting="max_image_bytes x max_batch_images",
    )
    if len(images) > settings.queue_size:  # never fits, however long the client waits: not a 503 to retry
        raise ApiError(
            413,
            "too_many_images",
            f"{len(images)} images in one batch; this service's queue holds at most {settings.queue_size} (queue_size)",
        )
    free = service.batcher.room
    if len(images) > free:
        raise service.queue_full(
            f"{len(images)} images do not fit the inference queue ({free} of queue_size={settings.queue_size} free)",
            service.batcher.retry_after(),
        )

    async def one(i: int, data: bytes) -> BatchItem:
        try:
            result = await service.predict(
                data, include_mask=mask, max_faces=max_faces, base_path="/v1/predictions", detect=detect, keep=keep
            )
        except ApiError as exc:
            return BatchItem(index=i, error=ErrorDetail(code=exc.code, message=exc.message))
        except Exception as exc:  # one image's unexpected failure is its own error, not the batch's
            log.error("batch image %d failed (request %s): %s: %s", i, current_request_id(), type(exc).__name__, exc)
            message = "this image could not be processed; the error was logged"
            return BatchItem(index=i, error=ErrorDetail(code="internal_error", message=message))
        return BatchItem(index=i, result=result)

    results = await until_disconnected(request, asyncio.gather(*(one(i, d) for i, d in enumerate(images))))
    return BatchResponse(results=list(results))
