"""GET /v1/models: what the service runs."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.schemas import ErrorResponse, ModelInfo, ModelsResponse

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models",
    response_model=ModelsResponse,
    summary="The loaded model: classes, profile, input size, weights checksum",
    responses={503: {"model": ErrorResponse}},
)
async def list_models(request: Request) -> ModelsResponse:
    service = request.app.state.service
    service.require_ready()
    return ModelsResponse(models=[ModelInfo(**service.model_info)])
