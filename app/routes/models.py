"""GET /v1/models: what the service runs. POST /v1/models:reload: load the weights file again (admin key)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from app.schemas import ErrorResponse, ModelInfo, ModelsResponse, ReloadResponse, error_responses

router = APIRouter(tags=["models"])
admin_router = APIRouter(tags=["models"])


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


@admin_router.post(
    "/v1/models:reload",
    response_model=ReloadResponse,
    summary="Load the weights file again and serve it once warmed up (no restart; requests in flight finish on theirs)",
    responses=error_responses(
        {
            401: "the admin key is missing or wrong",
            403: "reloads are off: FMPN_ADMIN_API_KEY is not set",
            409: "a reload is already running",
            422: "the weights file could not be loaded; the model serving before keeps serving",
            503: "the model is still loading",
        }
    ),
)
async def reload_model(
    request: Request,
    force: bool = Query(False, description="load even when the file's SHA-256 is the serving model's"),
) -> ReloadResponse:
    service = request.app.state.service
    outcome = await service.reload(force=force)
    return ReloadResponse(
        reloaded=outcome["reloaded"],
        previous_version=outcome["previous_version"],
        model=ModelInfo(**service.model_info),
        seconds=round(outcome["seconds"], 3),
    )
