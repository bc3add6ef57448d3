"""Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
FACE_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50)
# The methods counted by name in fmpn_http_requests_total; any other is "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fmpn_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "fmpn_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "fmpn_stage_duration_seconds",
            "time per pipeline stage: decode (per image), detect / align / model (per batch), render (per overlay)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "fmpn_queue_wait_seconds", "time an image waited for the model batcher", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "fmpn_batch_size_images", "images per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_faces = Histogram(
            "fmpn_batch_size_faces", "faces per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.faces_per_image = Histogram(
            "fmpn_faces_per_image", "faces detected per image (detect=true)", buckets=FACE_BUCKETS, registry=r
        )
        self.images = Counter(
            "fmpn_images_total",
            "images predicted, by path: detect=true (photos: detector + alignment) or false (face crops, whole)",
            ["detect"],
            registry=r,
        )
        self.videos = Counter("fmpn_videos_total", "videos predicted (POST /v1/videos:predict)", registry=r)
        self.video_frames = Counter("fmpn_video_frames_total", "video frames analysed", registry=r)
        self.rejected = Counter(
            "fmpn_rejected_total", "requests refused before inference, by reason", ["reason"], registry=r
        )
        # Exported at 0 from the start, so that increase() in alert rules counts a first failure or refusal.
        for reason in ("inference_failed", "queue_full", "not_ready", "rate_limited", "invalid_video"):
            self.rejected.labels(reason)
        self.queue_depth = Gauge("fmpn_queue_depth", "images waiting for the batcher", registry=r)
        self.results_stored = Gauge("fmpn_results_stored", "results held in memory", registry=r)
        self.results_bytes = Gauge("fmpn_results_bytes", "image bytes held in memory by results", registry=r)
        self.ready = Gauge("fmpn_ready", "1 when the model is loaded and warmed up", registry=r)
        self.model = Info("fmpn_model", "the model new requests get: name, version, profile, device", registry=r)
        self.reloads = Counter(
            "fmpn_model_reloads_total",
            "model reloads by outcome: loaded, unchanged (same SHA-256), failed (the old model kept serving)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("loaded", "unchanged", "failed"):  # exported at 0 from the start, for alert rules
            self.reloads.labels(outcome)


class MetricsMiddleware:
    """Counts every request by route template (not raw path: ids would explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")  # any token a client sends: one label value each would grow without end
            method = method if method in HTTP_METHODS else "other"
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.request_latency.labels(path).observe(time.perf_counter() - start)
