"""GET a stored result, its overlay, and a face's mask."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from app.errors import ApiError
from app.schemas import PredictionResponse, error_responses, mask_png

router = APIRouter(tags=["results"])

_404 = error_responses(
    {
        404: "unknown or expired result id, or no such face",
        422: "invalid parameters",  # not FastAPI's default body: ours
    }
)
_PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}


def _private(settings) -> dict[str, str]:
    return {"Cache-Control": f"private, max-age={int(settings.result_ttl_s)}", "X-Content-Type-Options": "nosniff"}


@router.get(
    "/v1/predictions/{result_id}",
    response_model=PredictionResponse,
    summary="A stored result (masks left out; fetch them with mask_url)",
    responses=_404,
)
async def get_prediction(request: Request, result_id: str) -> dict:
    return request.app.state.service.get_result(result_id).response


@router.get(
    "/v1/predictions/{result_id}/overlay.png",
    summary="The photo with boxes, labels and each face's motion mask as a heat map",
    response_class=Response,
    responses={**_PNG, **_404},
)
async def get_overlay(
    request: Request,
    result_id: str,
    alpha: float | None = Query(None, ge=0.0, le=1.0, description="heat-map opacity (default: mask_alpha)"),
    boxes: bool = Query(True, description="draw face boxes"),
    labels: bool = Query(True, description="draw labels"),
    max_side: int | None = Query(None, ge=16, le=16384, description="downscale so the longer side is at most this"),
) -> Response:
    service = request.app.state.service
    stored = service.get_result(result_id)
    a = request.app.state.settings.mask_alpha if alpha is None else alpha
    png = await service.overlay(stored, alpha=a, boxes=boxes, labels=labels, max_side=max_side)
    return Response(png, media_type="image/png", headers=_private(request.app.state.settings))


@router.get(
    "/v1/predictions/{result_id}/faces/{face_index}/mask.png",
    summary="One face's motion mask (8-bit grey PNG at the aligned-crop size)",
    response_class=Response,
    responses={**_PNG, **_404},
)
async def get_mask(request: Request, result_id: str, face_index: int) -> Response:
    service = request.app.state.service
    stored = service.get_result(result_id)
    faces = stored.prediction.faces
    if not 0 <= face_index < len(faces):
        raise ApiError(
            404,
            "face_not_found",
            f"result {result_id!r} has {len(faces)} face(s); valid indices are 0..{len(faces) - 1}"
            if faces
            else f"result {result_id!r} has no faces",
        )
    return Response(
        mask_png(faces[face_index].mask), media_type="image/png", headers=_private(request.app.state.settings)
    )
