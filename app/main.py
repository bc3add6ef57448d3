"""The FastAPI app: ``uvicorn app.main:app`` (settings from ``FMPN_*``) or ``create_app(settings)``.

The model loads in the background after start-up; ``/healthz`` answers at once, ``/readyz`` says 503
(with the reason) until the checkpoint is loaded and warmed up, and /v1 routes answer 503 meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

import fmpn
from app import logs
from app.errors import install_error_handlers
from app.memory import limit_malloc_arenas
from app.metrics import Metrics, MetricsMiddleware
from app.request_id import HEADER, RequestIdMiddleware
from app.routes import demo, health, models, predictions, results, videos
from app.security import RateLimiter, check_admin_key, check_api_key, check_rate_limit
from app.service import Service
from app.settings import Settings
from fmpn.inference import Predictor

DESCRIPTION = """
Facial-expression recognition with Facial Motion Prior Networks (FMPN).

POST a photo to `/v1/predictions`; every face comes back with its box, landmarks, expression
probabilities and the generated facial-motion mask. GET `/v1/predictions/{id}/overlay.png` to see
them drawn on the photo. Results (and the photo) are kept in memory only, for `result_ttl_s` seconds.
Errors are JSON `{"error": {"code", "message", "request_id"}}`; every answer carries `X-Request-ID` (the
caller's own, or a fresh one).
"""


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> FastAPI:
    """Build the app. ``predictor``: an already-loaded one to use instead of loading ``settings.weights``."""
    settings = settings or Settings()
    limit_malloc_arenas()  # before any worker thread allocates: see app/memory.py
    metrics = Metrics()
    service = Service(settings, metrics, predictor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(service.start(), name="fmpn-load")
        app.state.loader = loader
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
                try:
                    await loader
                except (asyncio.CancelledError, Exception):
                    pass
            await service.stop()

    app = FastAPI(
        title="FMPN facial-expression service",
        version=fmpn.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service
    app.state.rate_limiter = (
        RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if settings.rate_limit_per_minute > 0
        else None
    )
    install_error_handlers(app)
    # Rate limit first, so guessing keys is rate limited too.
    guarded = [Depends(check_rate_limit), Depends(check_api_key)]
    app.include_router(health.router)
    app.include_router(demo.router)
    app.include_router(models.router, dependencies=guarded)
    app.include_router(models.admin_router, dependencies=[Depends(check_rate_limit), Depends(check_admin_key)])
    app.include_router(predictions.router, dependencies=guarded)
    app.include_router(results.router, dependencies=guarded)
    app.include_router(videos.router, dependencies=guarded)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:  # outermost: a browser's preflight is answered before the key or the rate limit
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept", HEADER],
            expose_headers=["Retry-After", HEADER],
            max_age=600,
        )
    return app


def _app_from_environment() -> FastAPI:
    try:
        settings = Settings()
    except ValidationError as exc:  # a clear message, not a stack trace
        problems = "; ".join(f"FMPN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"fmpn service: invalid settings: {problems}") from None
    logs.configure(settings.log_format)
    return create_app(settings)


app = _app_from_environment()
