"""``app.client.Client`` and ``AsyncClient`` against the real server on 127.0.0.1: every call, the waits they make,
the errors they raise."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from conftest import require_data
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    live_server,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

from app.client import AsyncClient, Client, ServiceError


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
        items = fmpn.predict_batch([photo_jpeg(PORTRAITS[0]), b"not an image"], mask=False)
        assert items[0]["result"]["faces"] and items[1]["error"]["code"] == "not_an_image"
        with pytest.raises(ServiceError) as info:
            fmpn.predict(b"not an image")
        assert (info.value.status, info.value.code) == (400, "not_an_image")
        assert re.fullmatch("[0-9a-f]{32}", info.value.request_id) and info.value.request_id in str(info.value)
        with pytest.raises(ServiceError) as info:
            fmpn.overlay("no-such-result")
        assert info.value.code == "result_not_found"


def test_videos_whole_and_streamed(server) -> None:
    clip = require_data("photos", "clip-multiface.mp4")
    with Client(server.url) as fmpn:
        whole = fmpn.predict_video(clip, fps=5)
        lines = list(fmpn.stream_video(clip.read_bytes(), fps=5))
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
