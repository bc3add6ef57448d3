"""A Python client for the service: what ``curl`` does in the README, with the retries a caller should make.

    from app.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as fmpn:
        result = fmpn.predict("photo.jpg")                 # the POST /v1/predictions JSON, as a dict
        png = fmpn.overlay(result["id"], alpha=0.6)        # the rendered overlay
        for line in fmpn.stream_video("clip.mp4", fps=5):  # JSON lines as the frames are analysed
            ...

:class:`AsyncClient` makes the same calls from asyncio code (``async with``, ``await``, ``async for``).

Backpressure is retried, not raised: 503 ``not_ready`` / ``queue_full`` and 429 ``rate_limited`` wait for their
``Retry-After`` (at most ``max_wait_s`` in all), as do refused connections while the server starts. Every other
error answer raises :class:`ServiceError` with the service's code and message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

RETRIED = {429: {"rate_limited"}, 503: {"not_ready", "queue_full"}}


class ServiceError(Exception):
    """An error answer: HTTP ``status``, the service's ``code`` (e.g. ``too_many_pixels``) and ``message``, and
    the ``request_id`` its log lines carry (quote it to whoever runs the service)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


def _service_error(status: int, error: dict[str, Any]) -> ServiceError:
    request_id = error.get("request_id")
    return ServiceError(
        status, str(error["code"]), str(error["message"]), None if request_id is None else str(request_id)
    )


def _content(source: str | Path | bytes) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _error(response: httpx.Response) -> ServiceError:
    try:
        return _service_error(response.status_code, response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return ServiceError(response.status_code, "http_error", response.text[:200])


def _wait_for(response: httpx.Response, deadline: float) -> float:
    """Seconds to wait before sending again, for backpressure the deadline leaves time for; else the error."""
    error = _error(response)
    wait = float(response.headers.get("retry-after", "1") or 1)
    if error.code not in RETRIED.get(response.status_code, set()) or time.monotonic() + wait > deadline:
        raise error
    return wait


@dataclass
class _Call:
    """One API call, whichever client sends it: the request, and what the caller gets from the answer."""

    method: str
    path: str
    kwargs: dict[str, Any]
    result: Callable[[httpx.Response], Any] = httpx.Response.json


def _predict(image: str | Path | bytes, mask: bool, max_faces: int | None, detect: bool, keep: bool) -> _Call:
    params = {"mask": mask, "detect": detect, "keep": keep, **({"max_faces": max_faces} if max_faces else {})}
    return _Call("POST", "/v1/predictions", {"params": params, "files": {"image": ("image", _content(image))}})


def _predict_batch(images: list[str | Path | bytes], mask: bool, keep: bool) -> _Call:
    files = [("images", (f"image{i}", _content(im))) for i, im in enumerate(images)]
    kwargs = {"params": {"mask": mask, "keep": keep}, "files": files}
    return _Call("POST", "/v1/predictions:batch", kwargs, lambda r: r.json()["results"])


def _overlay(result_id: str, alpha: float | None, max_side: int | None) -> _Call:
    params = {k: v for k, v in {"alpha": alpha, "max_side": max_side}.items() if v is not None}
    return _Call("GET", f"/v1/predictions/{result_id}/overlay.png", {"params": params}, lambda r: r.content)


def _reload(admin_key: str, force: bool) -> _Call:
    """Not retried: a 409 means another reload is running, and sending again would start one more."""
    return _Call("POST", "/v1/models:reload", {"params": {"force": force}, "headers": {"X-API-Key": admin_key}})


def _video(
    video: str | Path | bytes, fps: float | None, max_frames: int | None, detect_every: int | None, stream: bool = False
) -> _Call:
    asked = {"fps": fps, "max_frames": max_frames, "detect_every": detect_every}
    params = {k: v for k, v in asked.items() if v is not None}
    headers = {"Content-Type": "application/octet-stream"}
    if stream:
        headers["Accept"] = "application/x-ndjson"
    return _Call("POST", "/v1/videos:predict", {"params": params, "content": _content(video), "headers": headers})


def _line(response: httpx.Response, text: str) -> dict[str, Any] | None:
    """One streamed JSON line (None for a blank one); an ``error`` line raises."""
    if not text:
        return None
    line = json.loads(text)
    if line.get("type") == "error":
        raise _service_error(response.status_code, line["error"])
    return line


_MODELS = _Call("GET", "/v1/models", {}, lambda r: r.json()["models"])


class Client:
    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = 300.0, max_wait_s: float = 60.0
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.max_wait_s = max_wait_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: _Call, *, stream: bool = False) -> httpx.Response:
        """The call's answer, after the waits the service asks for."""
        deadline = time.monotonic() + self.max_wait_s
        while True:
            try:
                response = self.http.send(self.http.build_request(call.method, call.path, **call.kwargs), stream=stream)
            except httpx.ConnectError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
                continue
            if response.is_success:
                return response
            if stream:
                response.read()
            time.sleep(_wait_for(response, deadline))

    def ready(self) -> bool:
        """Whether the model is loaded and warmed up (``GET /readyz``); never waits."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[dict[str, Any]]:
        return _MODELS.result(self._send(_MODELS))

    def predict(
        self,
        image: str | Path | bytes,
        *,
        mask: bool = True,
        max_faces: int | None = None,
        detect: bool = True,
        keep: bool = True,
    ) -> dict[str, Any]:
        """One photo (a path or its bytes): every face's box, landmarks, probabilities and mask.
        ``keep=False``: the service keeps nothing (no id or overlay URL)."""
        call = _predict(image, mask, max_faces, detect, keep)
        return call.result(self._send(call))

    def predict_batch(
        self, images: list[str | Path | bytes], *, mask: bool = True, keep: bool = True
    ) -> list[dict[str, Any]]:
        """Several photos in one request: ``{"index", "result" or "error"}`` per photo, in order."""
        call = _predict_batch(images, mask, keep)
        return call.result(self._send(call))

    def overlay(self, result_id: str, *, alpha: float | None = None, max_side: int | None = None) -> bytes:
        """The PNG of a stored result's photo with its boxes, labels and masks."""
        call = _overlay(result_id, alpha, max_side)
        return call.result(self._send(call))

    def reload_model(self, admin_key: str, *, force: bool = False) -> dict[str, Any]:
        """Have the service load its weights file again (a new release put in its place) and serve it once warmed
        up: ``{"reloaded", "previous_version", "model", "seconds"}``. Needs the service's FMPN_ADMIN_API_KEY."""
        call = _reload(admin_key, force)
        return call.result(self._send(call))

    def predict_video(
        self,
        video: str | Path | bytes,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        detect_every: int | None = None,
    ) -> dict[str, Any]:
        """A video's sampled frames with their faces' track ids, and the tracks; one answer at the end.
        ``detect_every`` N: faces followed between whole-frame detections every N sampled frames (faster)."""
        call = _video(video, fps, max_frames, detect_every)
        return call.result(self._send(call))

    def stream_video(
        self,
        video: str | Path | bytes,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        detect_every: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The same as JSON lines while the frames are analysed: a ``video`` line, ``frame`` lines, a ``summary``.
        An ``error`` line (the analysis failed midway) raises :class:`ServiceError` after the lines before it."""
        response = self._send(_video(video, fps, max_frames, detect_every, stream=True), stream=True)
        try:
            for text in response.iter_lines():
                line = _line(response, text)
                if line is not None:
                    yield line
        finally:
            response.close()


class AsyncClient:
    """:class:`Client`'s calls for asyncio code, with the same waits and errors."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = 300.0, max_wait_s: float = 60.0
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.max_wait_s = max_wait_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: _Call, *, stream: bool = False) -> httpx.Response:
        deadline = time.monotonic() + self.max_wait_s
        while True:
            try:
                request = self.http.build_request(call.method, call.path, **call.kwargs)
                response = await self.http.send(request, stream=stream)
            except httpx.ConnectError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            if response.is_success:
                return response
            if stream:
                await response.aread()
            await asyncio.sleep(_wait_for(response, deadline))

    async def ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def models(self) -> list[dict[str, Any]]:
        return _MODELS.result(await self._send(_MODELS))

    async def predict(
        self,
        image: str | Path | bytes,
        *,
        mask: bool = True,
        max_faces: int | None = None,
        detect: bool = True,
        keep: bool = True,
    ) -> dict[str, Any]:
        call = _predict(image, mask, max_faces, detect, keep)
        return call.result(await self._send(call))

    async def predict_batch(
        self, images: list[str | Path | bytes], *, mask: bool = True, keep: bool = True
    ) -> list[dict[str, Any]]:
        call = _predict_batch(images, mask, keep)
        return call.result(await self._send(call))

    async def overlay(self, result_id: str, *, alpha: float | None = None, max_side: int | None = None) -> bytes:
        call = _overlay(result_id, alpha, max_side)
        return call.result(await self._send(call))

    async def reload_model(self, admin_key: str, *, force: bool = False) -> dict[str, Any]:
        call = _reload(admin_key, force)
        return call.result(await self._send(call))

    async def predict_video(
        self,
        video: str | Path | bytes,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        detect_every: int | None = None,
    ) -> dict[str, Any]:
        call = _video(video, fps, max_frames, detect_every)
        return call.result(await self._send(call))

    async def stream_video(
        self,
        video: str | Path | bytes,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        detect_every: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        response = await self._send(_video(video, fps, max_frames, detect_every, stream=True), stream=True)
        try:
            async for text in response.aiter_lines():
                line = _line(response, text)
                if line is not None:
                    yield line
        finally:
            await response.aclose()
