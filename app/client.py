"""A Python client for the service: what ``curl`` does in the README, with the retries a caller should make.

    from app.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as fmpn:
        result = fmpn.predict("photo.jpg")                 # the POST /v1/predictions JSON, as a dict
        png = fmpn.overlay(result["id"], alpha=0.6)        # the rendered overlay
        mask = fmpn.mask(result["id"], 0)                  # face 0's motion mask, a grey PNG
        for line in fmpn.stream_video("clip.mp4", fps=5):  # JSON lines as the frames are analysed
            ...

:class:`AsyncClient` makes the same calls from asyncio code (``async with``, ``await``, ``async for``).

Backpressure is retried, not raised: 503 ``not_ready`` / ``queue_full`` and 429 ``rate_limited`` wait for their
``Retry-After`` (seconds or an HTTP date; at most ``max_wait_s`` in all), as do refused connections while the server
starts. Every other error answer raises :class:`ServiceError` with the service's code and message, as does a streamed
video's ``error`` line (with the HTTP status the error would have had).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


def _retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` header asks to wait: delay-seconds or an HTTP date (RFC 9110; proxies and load
    balancers send dates); 1 s when it is missing or unreadable, 0 for a date already past."""
    if not value or not value.strip():
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return 1.0 if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return 1.0
    if when.tzinfo is None:  # an HTTP date is GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _wait_for(response: httpx.Response, deadline: float) -> float:
    """Seconds to wait before sending again, for backpressure the deadline leaves time for; else the error."""
    error = _error(response)
    wait = _retry_after(response.headers.get("retry-after"))
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


def _given(**params: Any) -> dict[str, Any]:
    """The query parameters the caller gave (None: the service's default). 0 and False are given."""
    return {k: v for k, v in params.items() if v is not None}


def _result_path(result_id: str) -> str:
    return f"/v1/predictions/{quote(result_id, safe='')}"


def _predict(image: str | Path | bytes, mask: bool, max_faces: int | None, detect: bool, keep: bool) -> _Call:
    params = _given(mask=mask, detect=detect, keep=keep, max_faces=max_faces)
    return _Call("POST", "/v1/predictions", {"params": params, "files": {"image": ("image", _content(image))}})


def _predict_batch(
    images: list[str | Path | bytes], mask: bool, max_faces: int | None, detect: bool, keep: bool
) -> _Call:
    files = [("images", (f"image{i}", _content(im))) for i, im in enumerate(images)]
    kwargs = {"params": _given(mask=mask, detect=detect, keep=keep, max_faces=max_faces), "files": files}
    return _Call("POST", "/v1/predictions:batch", kwargs, lambda r: r.json()["results"])


def _result(result_id: str) -> _Call:
    return _Call("GET", _result_path(result_id), {})


def _overlay(result_id: str, alpha: float | None, boxes: bool, labels: bool, max_side: int | None) -> _Call:
    params = _given(alpha=alpha, boxes=boxes, labels=labels, max_side=max_side)
    return _Call("GET", f"{_result_path(result_id)}/overlay.png", {"params": params}, lambda r: r.content)


def _mask(result_id: str, face: int) -> _Call:
    return _Call("GET", f"{_result_path(result_id)}/faces/{int(face)}/mask.png", {}, lambda r: r.content)


def _reload(admin_key: str, force: bool) -> _Call:
    """Not retried: a 409 means another reload is running, and sending again would start one more."""
    return _Call("POST", "/v1/models:reload", {"params": {"force": force}, "headers": {"X-API-Key": admin_key}})


def _video(
    video: str | Path | bytes,
    fps: float | None,
    max_frames: int | None,
    detect_every: int | None,
    mask: bool,
    max_faces: int | None,
    start: float | None,
    end: float | None,
    stream: bool = False,
) -> _Call:
    params = _given(
        fps=fps, max_frames=max_frames, detect_every=detect_every, mask=mask, max_faces=max_faces, start=start, end=end
    )
    headers = {"Content-Type": "application/octet-stream"}
    if stream:
        headers["Accept"] = "application/x-ndjson"
    return _Call("POST", "/v1/videos:predict", {"params": params, "content": _content(video), "headers": headers})


def _line(text: str) -> dict[str, Any] | None:
    """One streamed JSON line (None for a blank one); an ``error`` line raises, with the HTTP status the service
    says the error would have had (the stream's own is 200: it was sent before the error; 500 if none is given)."""
    if not text:
        return None
    line = json.loads(text)
    if line.get("type") == "error":
        status = line.get("status")
        valid = isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599
        raise _service_error(status if valid else 500, line["error"])
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
        self,
        images: list[str | Path | bytes],
        *,
        mask: bool = True,
        max_faces: int | None = None,
        detect: bool = True,
        keep: bool = True,
    ) -> list[dict[str, Any]]:
        """Several photos in one request: ``{"index", "result" or "error"}`` per photo, in order."""
        call = _predict_batch(images, mask, max_faces, detect, keep)
        return call.result(self._send(call))

    def result(self, result_id: str) -> dict[str, Any]:
        """A stored result (``GET /v1/predictions/{id}``): the prediction's JSON without masks (``mask_url``)."""
        call = _result(result_id)
        return call.result(self._send(call))

    def overlay(
        self,
        result_id: str,
        *,
        alpha: float | None = None,
        boxes: bool = True,
        labels: bool = True,
        max_side: int | None = None,
    ) -> bytes:
        """The PNG of a stored result's photo with its boxes, labels and masks."""
        call = _overlay(result_id, alpha, boxes, labels, max_side)
        return call.result(self._send(call))

    def mask(self, result_id: str, face: int) -> bytes:
        """Face ``face``'s motion mask of a stored result: an 8-bit grey PNG at the aligned-crop size."""
        call = _mask(result_id, face)
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
        mask: bool = False,
        max_faces: int | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> dict[str, Any]:
        """A video's sampled frames with their faces' track ids, and the tracks; one answer at the end.
        ``detect_every`` N: faces followed between whole-frame detections every N sampled frames (faster);
        ``mask``: each face's motion mask too (large for a video); ``start``/``end``: only that stretch, in
        seconds (a video longer than the service's frame limit, a window at a time)."""
        call = _video(video, fps, max_frames, detect_every, mask, max_faces, start, end)
        return call.result(self._send(call))

    def stream_video(
        self,
        video: str | Path | bytes,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        detect_every: int | None = None,
        mask: bool = False,
        max_faces: int | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The same as JSON lines while the frames are analysed: a ``video`` line, ``frame`` lines, a ``summary``.
        An ``error`` line (the analysis failed midway) raises :class:`ServiceError` after the lines before it."""
        call = _video(video, fps, max_frames, detect_every, mask, max_faces, start, end, stream=True)
        response = self._send(call, stream=True)
        try:
            for text in response.iter_lines():
                line = _line(text)
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
        self,
        images: list[str | Path | bytes],
        *,
        mask: bool = True,
        max_faces: int | None = None,
        detect: bool = True,
        keep: bool = True,
    ) -> list[dict[str, Any]]:
        call = _predict_batch(images, mask, max_faces, detect, keep)
        return call.result(await self._send(call))

    async def result(self, result_id: str) -> dict[str, Any]:
        call = _result(result_id)
        return call.result(await self._send(call))

    async def overlay(
        self,
        result_id: str,
        *,
        alpha: float | None = None,
        boxes: bool = True,
        labels: bool = True,
        max_side: int | None = None,
    ) -> bytes:
        call = _overlay(result_id, alpha, boxes, labels, max_side)
        return call.result(await self._send(call))

    async def mask(self, result_id: str, face: int) -> bytes:
        call = _mask(result_id, face)
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
        mask: bool = False,
        max_faces: int | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> dict[str, Any]:
        call = _video(video, fps, max_frames, detect_every, mask, max_faces, start, end)
        return call.result(await self._send(call))

    async def stream_video(
        self,
        video: str | Path | bytes,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        detect_every: int | None = None,
        mask: bool = False,
        max_faces: int | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        call = _video(video, fps, max_frames, detect_every, mask, max_faces, start, end, stream=True)
        response = await self._send(call, stream=True)
        try:
            async for text in response.aiter_lines():
                line = _line(text)
                if line is not None:
                    yield line
        finally:
            await response.aclose()
