"""A client that goes away stops its work: photos, a batch, a video answered as one document, an upload cut off.
Each ends as 499 ``client_disconnected`` in the metrics (not a 500: the 5xx alert stays quiet), and nothing is
stored for it. A real uvicorn server and real sockets."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from conftest import require_data
from test_app_helpers import (
    GROUP,
    live_server,
    metric_value,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)


@pytest.fixture(scope="module")
def server():
    srv = live_server(max_batch=16, max_batch_images=16, detect_max_side=1280)
    yield srv
    srv.stop()


def _wait_for(server, route: str, status: str, timeout: float = 60.0) -> str:
    """The metrics once ``route`` has answered ``status`` (the server notices the disconnect at its next look)."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            text = client.get("/metrics").text
            if metric_value(text, "fmpn_http_requests_total", route=route, status=status) >= 1:
                return text
            assert time.monotonic() < deadline, f"no {status} on {route}"
            time.sleep(0.1)


def test_a_batch_whose_client_leaves_is_neither_finished_nor_stored(server) -> None:
    group = photo_jpeg(GROUP, 1280)
    files = [("images", (f"g{i}.jpg", group)) for i in range(8)]
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=httpx.Timeout(30, read=0.3)) as c:
        c.post("/v1/predictions:batch", files=files)
    text = _wait_for(server, "/v1/predictions:batch", "499")
    time.sleep(1.0)  # whatever was still running has ended by now
    with server.client() as client:
        text = client.get("/metrics").text
    assert metric_value(text, "fmpn_results_stored") == 0
    assert metric_value(text, "fmpn_http_requests_total", status="500") == 0


def test_a_video_whose_client_leaves_stops_decoding(server) -> None:
    clip = require_data("photos", "clip-multiface.mp4").read_bytes()
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=httpx.Timeout(30, read=1.0)) as c:
        c.post("/v1/videos:predict", params={"fps": 10, "max_frames": 40}, content=clip)
    _wait_for(server, "/v1/videos:predict", "499")
    time.sleep(1.0)
    with server.client() as client:
        frames = metric_value(client.get("/metrics").text, "fmpn_video_frames_total")
    assert frames < 40  # stopped part way, not run to the end for no one


def test_a_video_whose_client_leaves_while_its_frames_decode_ends_as_499(server, monkeypatch) -> None:
    """The client leaves while the decoder's thread is reading frames: the decoder is closed once that read ends
    (closed while it ran, it failed with "generator already executing", a 500; seen once in CI)."""
    import app.service as service

    real, reading = service.sample_frames, []

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - sample_frames' own
        for frame in real(*args, **kwargs):
            reading.append(time.monotonic())
            time.sleep(0.4)  # most of the time in the decoder's thread
            yield frame

    monkeypatch.setattr(service, "sample_frames", slow)
    route = "/v1/videos:predict"

    def count(status: str) -> float:
        with server.client() as client:
            return metric_value(client.get("/metrics").text, "fmpn_http_requests_total", route=route, status=status)

    gone, failed = count("499"), count("500")
    clip = require_data("photos", "clip-multiface.mp4").read_bytes()
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=httpx.Timeout(30, read=1.0)) as c:
        c.post(route, params={"fps": 10, "max_frames": 40}, content=clip)
    deadline = time.monotonic() + 60
    while count("499") == gone and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count("499") == gone + 1 and count("500") == failed
    assert len(reading) < 40  # stopped part way


def test_an_upload_cut_off_is_not_a_server_error(server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = "POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head.encode() + bytes(5000))
    text = _wait_for(server, "/v1/predictions", "499")
    assert metric_value(text, "fmpn_http_requests_total", status="500") == 0
