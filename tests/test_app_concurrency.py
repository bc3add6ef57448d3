"""Dynamic batching through a real uvicorn server on 127.0.0.1: concurrent requests with different
photos each get their own faces back, requests really share batches, the event loop stays free
while the model runs, and a full queue answers 503 with Retry-After."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import random
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    encode,
    error_of,
    live_server,
    metric_value,
    one_torch_thread,  # noqa: F401  (autouse)
    photo,
    photo_jpeg,
)


@functools.cache
def images() -> dict[str, bytes]:
    """Different real photos (sizes and face counts differ), downscaled in memory."""
    return {
        "group": photo_jpeg(GROUP),
        **{name: photo_jpeg(name) for name in PORTRAITS},
        "portrait-small": photo_jpeg(PORTRAITS[0], 400),
    }


def _mask(face: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(face["mask"]["data"]))), dtype=int)


async def _post_all(
    url: str, names: list[str | bytes], probe_health: bool = False
) -> tuple[list[httpx.Response], list[float]]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        health: list[float] = []

        async def probe() -> None:
            await asyncio.sleep(0.3)  # once the batch is running
            for _ in range(5):
                t0 = time.perf_counter()
                r = await client.get("/healthz")
                assert r.status_code == 200
                health.append(time.perf_counter() - t0)
                await asyncio.sleep(0.1)

        posts = [
            client.post(
                "/v1/predictions",
                content=n if isinstance(n, bytes) else images()[n],
                headers={"Content-Type": "image/jpeg"},
            )
            for n in names
        ]
        extra = [probe()] if probe_health else []
        results = await asyncio.gather(*posts, *extra)
        return list(results[: len(names)]), health


def _boxes(body: dict) -> list[float]:
    return [f["box"][k] for f in body["faces"] for k in ("x1", "y1", "x2", "y2")]


@pytest.fixture(scope="module")
def server():
    srv = live_server(max_batch=8, batch_wait_ms=50, queue_size=64)
    yield srv
    srv.stop()


def test_concurrent_requests_get_their_own_faces(server) -> None:
    with server.client() as c:
        reference = {}
        for name, data in images().items():
            r = c.post("/v1/predictions", content=data, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200
            reference[name] = r.json()
        assert len(reference["group"]["faces"]) == 6
        before = c.get("/metrics").text

    names = list(images()) * 3
    random.Random(0).shuffle(names)
    responses, health = asyncio.run(_post_all(server.url, names, probe_health=True))

    for name, r in zip(names, responses, strict=True):
        assert r.status_code == 200, r.text
        body, ref = r.json(), reference[name]
        assert body["image"] == ref["image"], name
        assert len(body["faces"]) == len(ref["faces"]), name
        assert _boxes(body) == pytest.approx(_boxes(ref), abs=0.2), name
        for face, ref_face in zip(body["faces"], ref["faces"], strict=True):
            assert face["probabilities"] == pytest.approx(ref_face["probabilities"], abs=1e-4)
            assert np.abs(_mask(face) - _mask(ref_face)).max() <= 1
    assert len({r.json()["id"] for r in responses}) == len(names)

    with server.client() as c:
        after = c.get("/metrics").text
    batches = metric_value(after, "fmpn_batch_size_images_count") - metric_value(before, "fmpn_batch_size_images_count")
    n_images = metric_value(after, "fmpn_batch_size_images_sum") - metric_value(before, "fmpn_batch_size_images_sum")
    assert n_images == len(names)
    assert batches < len(names), "concurrent requests shared model batches"
    assert metric_value(after, "fmpn_batch_size_images_bucket", le="1.0") < metric_value(
        after, "fmpn_batch_size_images_count"
    )
    # inference runs off the event loop: probes answer while batches of photos are processed
    assert health and max(health) < 1.0, health


def test_full_queue_answers_503_with_retry_after() -> None:
    srv = live_server(max_batch=1, queue_size=1, batch_wait_ms=0)
    try:
        responses, _ = asyncio.run(_post_all(srv.url, ["group"] * 10))
        codes = [r.status_code for r in responses]
        # At least the request being answered succeeds; whether one more was queued before the other nine arrived
        # depends on the scheduler (a CI run on a busy 2-core machine saw one 200 and nine 503s).
        assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
        for r in responses:
            if r.status_code == 503:
                err = error_of(r)
                assert err["code"] == "queue_full" and "queue_size=1" in err["message"]
                assert int(r.headers["retry-after"]) >= 1
            else:
                assert len(r.json()["faces"]) == 6
        with srv.client() as c:  # and it recovers
            r = c.post("/v1/predictions", content=images()["group"], headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and len(r.json()["faces"]) == 6
            assert metric_value(c.get("/metrics").text, "fmpn_rejected_total", reason="queue_full") >= 1
            # a batch the queue can never hold is refused for good (413), not put off with a Retry-After for ever
            files = [("images", (f"{i}.jpg", images()["group"])) for i in range(2)]
            r = c.post("/v1/predictions:batch", files=files)
            assert r.status_code == 413 and error_of(r)["code"] == "too_many_images", r.text
            assert "queue_size" in error_of(r)["message"] and "retry-after" not in r.headers
    finally:
        srv.stop()


def test_photo_sizes_differ() -> None:
    """The check above is meaningful: the photos differ in size and face count."""
    sizes = {photo(GROUP).size, *(photo(n).size for n in PORTRAITS)}
    assert len(sizes) >= 4


def test_a_failing_image_does_not_fail_the_rest_of_its_batch(server, monkeypatch) -> None:
    predictor = server.app.state.service.predictor
    original = predictor.predict

    def flaky(batch, *args, **kwargs):
        if any(im.shape[1] == 321 for im in batch):
            raise RuntimeError("simulated failure on one image")
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(predictor, "predict", flaky)
    poison = encode(photo(PORTRAITS[3]).resize((321, 400)))
    responses, _ = asyncio.run(_post_all(server.url, ["group", poison, PORTRAITS[0], PORTRAITS[1]]))
    codes = [r.status_code for r in responses]
    assert codes == [200, 500, 200, 200], codes
    err = error_of(responses[1])
    assert err["code"] == "inference_failed" and "simulated" not in err["message"]
    assert len(responses[0].json()["faces"]) == 6


def test_the_model_loads_warms_up_and_runs_on_the_one_inference_thread(monkeypatch) -> None:
    """torch's OpenMP workers belong to the calling thread: a model loaded in another live thread made every
    request 1.5x slower (app/batching.py). Loading, warm-up and batches all run on the batcher's thread."""
    import threading

    from fmpn.inference import Predictor

    calls: list[tuple[str, str]] = []

    def recorded(name: str):
        original = getattr(Predictor, name)

        def wrapper(self, *args, **kwargs):
            calls.append((name, threading.current_thread().name))
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("__init__", "warmup", "predict"):
        monkeypatch.setattr(Predictor, name, recorded(name))
    server = live_server()
    try:
        with server.client() as c:
            for _ in range(2):
                r = c.post("/v1/predictions", content=images()["group"], headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200 and len(r.json()["faces"]) == 6
    finally:
        server.stop()
    assert [stage for stage, _ in calls] == ["__init__", "warmup", "predict", "predict"]
    assert {thread for _, thread in calls} == {calls[0][1]} and calls[0][1].startswith("fmpn-infer")


def test_video_frames_wait_behind_photos_yet_move_on() -> None:
    """The batcher's scheduling alone (a recording batch function): photos first, at most one video frame a batch,
    and one even when photos would fill it."""
    from app.batching import Batcher

    batches: list[list[str]] = []

    def run(images: list[str], options: list[dict]) -> tuple[list[str], dict]:
        batches.append(list(images))
        return images, {}

    async def main() -> list[str]:
        batcher = Batcher(run, max_batch=4, max_wait_s=0.0, queue_size=64)
        await batcher.start()
        frames = [asyncio.create_task(batcher.submit(f"f{i}", background=True)) for i in range(3)]
        photos = [asyncio.create_task(batcher.submit(f"p{i}")) for i in range(6)]
        done = await asyncio.gather(*frames, *photos)
        await batcher.stop()
        return [result for result, _ in done]

    assert asyncio.run(main()) == ["f0", "f1", "f2", "p0", "p1", "p2", "p3", "p4", "p5"]
    assert batches == [["p0", "p1", "p2", "f0"], ["p3", "p4", "p5", "f1"], ["f2"]]

    # One image a batch: a frame goes after each batch without one, however many photos wait (it starved before).
    batches.clear()

    async def one_a_batch() -> None:
        batcher = Batcher(run, max_batch=1, max_wait_s=0.0, queue_size=64)
        await batcher.start()
        frames = [asyncio.create_task(batcher.submit(f"f{i}", background=True)) for i in range(3)]
        photos = [asyncio.create_task(batcher.submit(f"p{i}")) for i in range(6)]
        await asyncio.gather(*frames, *photos)
        await batcher.stop()

    asyncio.run(one_a_batch())
    assert batches == [["p0"], ["f0"], ["p1"], ["f1"], ["p2"], ["f2"], ["p3"], ["p4"], ["p5"]]
