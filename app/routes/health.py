"""Liveness, readiness and Prometheus metrics (outside /v1: no API key, for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and warmed up (503 before, with the reason)",
    responses={503: {"description": "not ready: loading, warming up, or the model could not be loaded"}},
)
async def readyz(request: Request) -> JSONResponse:
    service = request.app.state.service
    body = {"ready": service.ready, "state": service.state, "reason": service.reason, "reloading": service.reloading}
    if service.ready:
        body["model"] = {k: service.model_info[k] for k in ("name", "profile", "version", "device")}
        return JSONResponse(body)
    headers = {"Retry-After": "2"} if service.state in ("starting", "loading", "warming_up") else None
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    request.app.state.service.refresh_gauges()
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
