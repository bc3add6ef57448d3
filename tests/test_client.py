"""``app.client.Client`` and ``AsyncClient`` against the real server on 127.0.0.1: every call, the waits they make,
the errors they raise."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import require_data
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    live_server,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

from app.client import AsyncClient, Client, ServiceError, _retry_after
from app.errors import ApiError


@pytest.fixture(scope="module")
def server():
    srv = live_server(max_video_frames=6, detect_max_side=960)
    yield srv
    srv.stop()


def test_photos_batches_overlays_and_errors(server) -> None:
    with Client(server.url) as fmpn:
        assert fmpn.ready() and fmpn.models()[0]["name"] == "random-cpu"
        result = fmpn.predict(photo_jpeg(GROUP))
        assert len(result["faces"]) == 6 and result["faces"][0]["mask"] is not None
        assert fmpn.predict(require_data("photos", f"{GROUP}.jpg"), mask=False, max_faces=2)["faces_detected"] >= 6
        unkept = fmpn.predict(photo_jpeg(PORTRAITS[0]), mask=False, keep=False)
        assert unkept["faces"] and unkept["id"] is None and unkept["overlay_url"] is None
        png = fmpn.overlay(result["id"], alpha=0.3, max_side=320)
        assert png.startswith(b"\x89PNG") and len(png) > 1000
        bare = fmpn.overlay(result["id"], alpha=0.0, boxes=False, labels=False, max_side=320)  # the photo alone
        assert bare.startswith(b"\x89PNG") and bare != fmpn.overlay(result["id"], alpha=0.0, max_side=320)
        stored = fmpn.result(result["id"])  # GET /v1/predictions/{id} and a face's mask
        assert stored["id"] == result["id"] and len(stored["faces"]) == 6 and stored["faces"][0]["mask"] is None
        assert fmpn.mask(result["id"], 5).startswith(b"\x89PNG")
        with pytest.raises(ServiceError) as info:
            fmpn.mask(result["id"], 6)
        assert (info.value.status, info.value.code) == (404, "face_not_found")
        items = fmpn.predict_batch([photo_jpeg(PORTRAITS[0]), b"not an image"], mask=False)
        assert items[0]["result"]["faces"] and items[1]["error"]["code"] == "not_an_image"
        items = fmpn.predict_batch([photo_jpeg(GROUP)], mask=False, detect=False, keep=False)
        assert items[0]["result"]["detected"] is False and len(items[0]["result"]["faces"]) == 1
        items = fmpn.predict_batch([photo_jpeg(GROUP)], mask=False, max_faces=2, keep=False)
        assert len(items[0]["result"]["faces"]) == 2 and items[0]["result"]["faces_truncated"]
        with pytest.raises(ServiceError) as info:  # 0 is sent (not dropped as falsy): the service refuses it
            fmpn.predict(photo_jpeg(PORTRAITS[0]), max_faces=0)
        assert info.value.status == 422 and "max_faces" in info.value.message
        with pytest.raises(ServiceError) as info:
            fmpn.predict(b"not an image")
        assert (info.value.status, info.value.code) == (400, "not_an_image")
        assert re.fullmatch("[0-9a-f]{32}", info.value.request_id) and info.value.request_id in str(info.value)
        with pytest.raises(ServiceError) as info:
            fmpn.overlay("no-such-result")
        assert info.value.code == "result_not_found"


def test_videos_whole_and_streamed(server, monkeypatch) -> None:
    clip = require_data("photos", "clip-multiface.mp4")
    with Client(server.url) as fmpn:
        whole = fmpn.predict_video(clip, fps=5)
        lines = list(fmpn.stream_video(clip.read_bytes(), fps=5))
        one = fmpn.predict_video(clip, max_frames=1, mask=True, max_faces=1)  # masks on request, fewer faces
        window = fmpn.predict_video(clip, fps=5, start=1, end=2)  # a stretch, its frames numbered as in the video
        assert [f["frame"] for f in window["frames"]] == [25, 30, 35, 40, 45] and window["end_s"] == 2
        (frame,) = one["frames"]
        assert len(frame["faces"]) == 1 < frame["faces_detected"] and frame["faces"][0]["mask"]["width"] == 64
    assert whole["frames_analysed"] == 6 and whole["frames_truncated"] is True
    assert [line["type"] for line in lines] == ["video"] + ["frame"] * 6 + ["summary"]
    assert lines[-1]["tracks"] == whole["tracks"]
    with Client(server.url) as fmpn, pytest.raises(ServiceError) as info:
        list(fmpn.stream_video(photo_jpeg(GROUP)))
    assert (info.value.status, info.value.code) == (415, "unsupported_video")
    with Client(server.url) as fmpn:  # faces followed between whole-frame detections: the first frame is whole
        followed = fmpn.predict_video(clip, fps=5, detect_every=6)
        assert followed["frames"][0] == whole["frames"][0] and followed["frames_analysed"] == 6
        with pytest.raises(ServiceError) as info:
            fmpn.predict_video(clip, detect_every=0)
    assert info.value.status == 422 and "detect_every" in info.value.message

    # A failure midway through a stream: the 200 is sent, and the error line says the status it would have had.
    async def queue_stays_full(*args, **kwargs):
        raise ApiError(503, "queue_full", "the service is busy: no room for the video's frames; retry later")

    monkeypatch.setattr(server.app.state.service, "_submit_frames", queue_stays_full)
    seen = []
    with Client(server.url) as fmpn, pytest.raises(ServiceError) as info:
        for line in fmpn.stream_video(clip, max_frames=2, mask=True, max_faces=1):
            seen.append(line["type"])
    assert seen == ["video"] and (info.value.status, info.value.code) == (503, "queue_full")


def _mocked(client: Client | AsyncClient, handler) -> None:  # noqa: ANN001 - httpx's handler
    """The client's calls answered by ``handler`` instead of a server."""
    cls = httpx.Client if isinstance(client, Client) else httpx.AsyncClient
    client.http = cls(base_url="http://fmpn.test", transport=httpx.MockTransport(handler))


def test_the_client_reads_retry_after_dates_error_lines_and_sends_every_parameter() -> None:
    """Without a server: what goes out, and how odd answers are read. Client and AsyncClient alike."""
    soon = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= _retry_after(soon) <= 30
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # already past
    odd = ("2", "0.5", None, "", "soon", "nan", "Fri, 99 Foo 2026 99:99:99 GMT")  # unreadable: 1 s
    assert [_retry_after(v) for v in odd] == [2, 0.5, 1, 1, 1, 1, 1]
    sent: list[str] = []
    busy = {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}  # an HTTP date (a proxy's), past the wait allowed

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.raw_path.decode()}")
        if request.url.path == "/v1/models":
            return httpx.Response(503, headers=busy, json={"error": {"code": "queue_full", "message": "busy"}})
        if request.url.path == "/v1/videos:predict":
            error = {"type": "error", "error": {"code": "inference_failed", "message": "a frame failed"}}
            if request.url.params.get("max_faces") == "2":
                error["status"] = 503
            return httpx.Response(200, content=b'{"type": "video"}\n' + json.dumps(error).encode() + b"\n")
        if request.url.path.endswith(".png"):
            return httpx.Response(200, content=b"\x89PNG")
        return httpx.Response(200, json={"results": [], "id": "x"})

    def check(statuses: list[int]) -> None:
        assert statuses == [503, 500, 503]  # the date waited for; the stream's statuses, 500 when none is given
        assert sent == [
            "GET /v1/models",
            "POST /v1/predictions?mask=true&detect=true&keep=true&max_faces=0",
            "POST /v1/predictions:batch?mask=false&detect=false&keep=true&max_faces=1",
            "GET /v1/predictions/a%2Fb",
            "GET /v1/predictions/r1/overlay.png?alpha=0.5&boxes=false&labels=false",
            "GET /v1/predictions/r1/faces/2/mask.png",
            "POST /v1/videos:predict?mask=true&max_faces=3",
            "POST /v1/videos:predict?fps=5.0&mask=false&max_faces=2&start=60.0&end=90.5",
        ]
        sent.clear()

    statuses = []
    with Client("http://fmpn.test", max_wait_s=30) as fmpn:
        _mocked(fmpn, answer)
        with pytest.raises(ServiceError) as info:
            fmpn.models()
        statuses.append(info.value.status)
        fmpn.predict(b"x", max_faces=0)
        fmpn.predict_batch([b"x"], mask=False, max_faces=1, detect=False)
        assert fmpn.result("a/b")["id"] == "x"
        assert fmpn.overlay("r1", alpha=0.5, boxes=False, labels=False) == b"\x89PNG" == fmpn.mask("r1", 2)
        for kwargs in ({"mask": True, "max_faces": 3}, {"fps": 5.0, "max_faces": 2, "start": 60.0, "end": 90.5}):
            with pytest.raises(ServiceError) as info:
                list(fmpn.stream_video(b"v", **kwargs))
            statuses.append(info.value.status)
    check(statuses)

    async def run() -> list[int]:
        statuses = []
        async with AsyncClient("http://fmpn.test", max_wait_s=30) as fmpn:
            _mocked(fmpn, answer)
            with pytest.raises(ServiceError) as info:
                await fmpn.models()
            statuses.append(info.value.status)
            await fmpn.predict(b"x", max_faces=0)
            await fmpn.predict_batch([b"x"], mask=False, max_faces=1, detect=False)
            assert (await fmpn.result("a/b"))["id"] == "x"
            assert await fmpn.overlay("r1", alpha=0.5, boxes=False, labels=False) == b"\x89PNG"
            assert await fmpn.mask("r1", 2) == b"\x89PNG"
            for kwargs in ({"mask": True, "max_faces": 3}, {"fps": 5.0, "max_faces": 2, "start": 60.0, "end": 90.5}):
                with pytest.raises(ServiceError) as info:
                    [line async for line in fmpn.stream_video(b"v", **kwargs)]
                statuses.append(info.value.status)
        return statuses

    check(asyncio.run(run()))


def test_the_client_waits_for_a_starting_service_and_a_rate_limit() -> None:
    srv = live_server(wait_ready=False, rate_limit_per_minute=30, rate_limit_burst=1)
    try:
        with Client(srv.url, max_wait_s=120) as fmpn:
            assert fmpn.predict(photo_jpeg(PORTRAITS[1]), mask=False)["faces"]  # 503 not_ready until loaded
            t0 = time.monotonic()
            assert fmpn.predict(photo_jpeg(PORTRAITS[1]), mask=False)["faces"]  # 429 first: the bucket is empty
            assert time.monotonic() - t0 >= 1.0  # it waited for Retry-After (a token every 2 s)
        with Client(srv.url, max_wait_s=0) as impatient, pytest.raises(ServiceError) as info:
            impatient.predict(photo_jpeg(PORTRAITS[1]))
        assert (info.value.status, info.value.code) == (429, "rate_limited")
    finally:
        srv.stop()


def test_an_api_key_is_sent() -> None:
    srv = live_server(api_key="s3cret")
    try:
        with Client(srv.url) as anonymous, pytest.raises(ServiceError) as info:
            anonymous.models()
        assert (info.value.status, info.value.code) == (401, "missing_api_key")
        with Client(srv.url, api_key="s3cret") as fmpn:
            assert fmpn.models()[0]["classes"][0] == "angry"
    finally:
        srv.stop()


def test_the_async_client_makes_the_same_calls_concurrently(server) -> None:
    clip = require_data("photos", "clip-multiface.mp4")

    async def run() -> None:
        async with AsyncClient(server.url) as fmpn:
            assert await fmpn.ready() and (await fmpn.models())[0]["name"] == "random-cpu"
            # three photos at once: the service batches them; each gets its own faces
            group, one, two = await asyncio.gather(
                fmpn.predict(photo_jpeg(GROUP)),
                fmpn.predict(photo_jpeg(PORTRAITS[0]), mask=False, keep=False),
                fmpn.predict(photo_jpeg(PORTRAITS[1]), max_faces=1),
            )
            assert [len(r["faces"]) for r in (group, one, two)] == [6, 1, 1] and one["id"] is None
            png = await fmpn.overlay(group["id"], max_side=320)
            assert png.startswith(b"\x89PNG")
            items = await fmpn.predict_batch([photo_jpeg(PORTRAITS[0]), b"not an image"], mask=False)
            assert items[1]["error"]["code"] == "not_an_image"
            lines = [line async for line in fmpn.stream_video(clip, fps=5)]
            assert [line["type"] for line in lines] == ["video"] + ["frame"] * 6 + ["summary"]
            assert (await fmpn.predict_video(clip, fps=5))["tracks"] == lines[-1]["tracks"]
            with pytest.raises(ServiceError) as info:
                await fmpn.predict(b"not an image")
            assert (info.value.status, info.value.code) == (400, "not_an_image") and info.value.request_id

    asyncio.run(run())


def test_the_async_client_waits_out_a_rate_limit() -> None:
    srv = live_server(rate_limit_per_minute=30, rate_limit_burst=1)

    async def run() -> float:
        async with AsyncClient(srv.url, max_wait_s=60) as fmpn:
            assert (await fmpn.predict(photo_jpeg(PORTRAITS[1]), mask=False))["faces"]
            t0 = time.monotonic()
            assert (await fmpn.predict(photo_jpeg(PORTRAITS[1]), mask=False))["faces"]  # 429 first, then waits
            return time.monotonic() - t0

    try:
        assert asyncio.run(run()) >= 1.0
    finally:
        srv.stop()
