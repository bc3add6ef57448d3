"""Faults the other service tests leave out (missing / corrupt weights: tests/test_app_access.py, test_app_cli.py):

- weights for another profile (tensors that do not fit the profile the checkpoint names) and profiles the code
  cannot build (a bare unknown name, a name without settings, an unknown backbone): ``fmpn serve`` refuses with one
  line and exit code 2; the app (``uvicorn app.main:app``) stays up, ``/readyz`` says why in one line, ``/v1``
  answers 503 ``model_unavailable`` as JSON, the log has one error line without a stack trace;
- a face detector that raises while it is built or warmed up (the same: not ready, with the reason) and one that
  raises on a request (that request gets a documented JSON error, the service goes on and recovers);
- graceful shutdown: SIGTERM while predictions are in flight lets every one of them finish with a 200, then the
  process exits cleanly.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time

import httpx
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from test_app_cli import _free_port, _start
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    checkpoint_path,
    encode,
    error_of,
    live_server,
    metric_value,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

import fmpn.detect
from cli.main import main
from fmpn.checkpoint import FORMAT, read_metadata
from fmpn.profiles import CPU, PAPER

JPEG = {"Content-Type": "image/jpeg"}

# name -> (the checkpoint's profile metadata, with the random CPU model's tensors; what the error must say)
BAD_PROFILES = {
    "weights_of_another_profile": (PAPER.to_dict(), "does not fit profile 'paper'"),
    "tensors_do_not_fit": (CPU.replace(ngf=32).to_dict(), "does not fit profile 'cpu'"),
    "unknown_profile_name": ("mobile", "its profile must be the profile's settings"),
    "profile_name_without_settings": ({"name": "mobile"}, "missing 2 required positional arguments"),
    "unknown_backbone": ({**CPU.to_dict(), "name": "mobile", "backbone": "mobilenet_v9"}, "unknown backbone"),
}


def _checkpoint_with_profile(folder, name: str, profile: object):
    """The random CPU checkpoint's tensors and metadata, with ``profile`` as its profile."""
    meta = read_metadata(checkpoint_path())
    assert meta["format"] == FORMAT
    path = folder / f"{name}.safetensors"
    save_file(load_file(str(checkpoint_path())), str(path), metadata={**meta, "profile": json.dumps(profile)})
    return path


def _wait_failed(client: httpx.Client, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        if r.json()["state"] == "failed" or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def _assert_down_with_reason(srv, expected: str, caplog) -> None:
    with srv.client() as c:
        r = _wait_failed(c)
        body = r.json()
        assert r.status_code == 503 and body["ready"] is False and body["state"] == "failed", body
        assert expected in body["reason"] and "\n" not in body["reason"], body
        assert c.get("/healthz").status_code == 200
        for resp in (
            c.post("/v1/predictions", content=photo_jpeg(PORTRAITS[0], 200), headers=JPEG),
            c.post("/v1/predictions:batch", json={"images": ["aGVsbG8="]}),
            c.get("/v1/models"),
            c.get("/v1/predictions/some-id/overlay.png"),
        ):
            assert resp.status_code in (503, 404), resp.text  # a result GET needs no model: unknown id -> 404
            if resp.status_code == 503:
                err = error_of(resp)
                assert err["code"] == "model_unavailable" and expected in err["message"]
        assert metric_value(c.get("/metrics").text, "fmpn_ready") == 0
    errors = [r for r in caplog.records if r.name.startswith("app") and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None and "\n" not in errors[0].getMessage() and expected in errors[0].getMessage()


# -- checkpoints that do not fit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_fmpn_serve_refuses_a_checkpoint_it_cannot_build(case, tmp_path, capsys, monkeypatch) -> None:
    import uvicorn

    def must_not_serve(*args, **kwargs):
        raise AssertionError("fmpn serve started the server with weights it cannot use")

    monkeypatch.setattr(uvicorn, "run", must_not_serve)
    profile, expected = BAD_PROFILES[case]
    path = _checkpoint_with_profile(tmp_path, case, profile)
    assert main(["serve", "--weights", str(path), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmpn serve: error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("case", ["weights_of_another_profile", "unknown_profile_name", "unknown_backbone"])
def test_the_app_stays_up_and_says_why_it_cannot_use_the_checkpoint(case, tmp_path, caplog) -> None:
    profile, expected = BAD_PROFILES[case]
    caplog.set_level(logging.ERROR, logger="app")
    srv = live_server(wait_ready=False, weights=_checkpoint_with_profile(tmp_path, case, profile))
    try:
        _assert_down_with_reason(srv, expected, caplog)
    finally:
        srv.stop()


# -- the face detector -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["built", "warmed_up"])
def test_a_detector_that_raises_at_start_up_leaves_the_service_not_ready(when, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError(f"simulated MTCNN failure\n  while being {when.replace('_', ' ')}")  # two lines: one said

    target = "__init__" if when == "built" else "detect_batch"
    monkeypatch.setattr(fmpn.detect.FaceDetector, target, broken)
    caplog.set_level(logging.ERROR, logger="app")
    srv = live_server(wait_ready=False)
    try:
        _assert_down_with_reason(srv, "simulated MTCNN failure", caplog)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server():
    srv = live_server()
    yield srv
    srv.stop()


def test_images_smaller_than_the_smallest_face_have_no_face(server) -> None:
    """Found by tests/test_fuzz.py: MTCNN raised on an image smaller than min_face_size (an empty scale pyramid),
    so a 1x1 PNG got a 500. Now: 200, no face, in a single and in a batch request."""
    tiny = {size: encode(Image.new("RGB", size, (120, 90, 60)), "PNG") for size in ((1, 1), (19, 300), (300, 19))}
    with server.client() as c:
        for size, data in tiny.items():
            r = c.post("/v1/predictions", content=data, headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["faces"] == [], (size, r.text)
        files = [("images", (f"{i}.png", d)) for i, d in enumerate([*tiny.values(), photo_jpeg(PORTRAITS[0], 200)])]
        results = c.post("/v1/predictions:batch", files=files).json()["results"]
        assert [len(item["result"]["faces"]) for item in results] == [0, 0, 0, 1], results


def test_a_detector_that_raises_on_a_request(server, caplog) -> None:
    srv = server
    detector = srv.app.state.service.predictor.detector
    original = detector.detect_batch
    caplog.set_level(logging.ERROR, logger="app")
    try:
        with srv.client() as c:
            detector.detect_batch = lambda images: (_ for _ in ()).throw(RuntimeError("simulated MTCNN failure"))
            traced = {**JPEG, "X-Request-ID": "t-42"}
            r = c.post("/v1/predictions", content=photo_jpeg(PORTRAITS[0], 200), headers=traced)
            err = error_of(r)
            assert r.status_code == 500 and err["code"] == "inference_failed", r.text  # documented (openapi)
            assert err["request_id"] == "t-42"  # and in the log line below
            assert "simulated" not in err["message"]  # the detail goes to the log, not to the client
            assert "500" in c.get("/openapi.json").json()["paths"]["/v1/predictions"]["post"]["responses"]
            r = c.post("/v1/predictions:batch", files=[("images", ("a.jpg", photo_jpeg(PORTRAITS[1], 200)))])
            assert r.status_code == 200 and r.json()["results"][0]["error"]["code"] == "inference_failed", r.text
            assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200

            detector.detect_batch = original  # the detector recovers: so does the service (its worker lived on)
            r = c.post("/v1/predictions", content=photo_jpeg(PORTRAITS[0], 200), headers=JPEG)
            assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text
            failed = metric_value(c.get("/metrics").text, "fmpn_rejected_total", reason="inference_failed")
            assert failed == 2
    finally:
        detector.detect_batch = original
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("simulated MTCNN failure" in m for m in messages)
    assert any("request t-42" in m for m in messages)
    assert all(r.exc_info is None for r in caplog.records)


# -- graceful shutdown -------------------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_predictions_finish(tmp_path) -> None:
    """The image's command (uvicorn with a graceful shutdown); one image per batch, so the requests queue
    up. SIGTERM once all of them are inside the server: each still gets its 200, then the process exits cleanly."""
    n = 5
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    env = {"FMPN_WEIGHTS": str(checkpoint_path()), "FMPN_MAX_BATCH": "1", "FMPN_BATCH_WAIT_MS": "0"}
    proc = _start([*cmd, "--timeout-graceful-shutdown", "20"], env)
    responses: list[httpx.Response | Exception] = [None] * n  # type: ignore[list-item]
    data = photo_jpeg(GROUP)

    def post(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                responses[i] = client.post("/v1/predictions", content=data, headers=JPEG)
        except Exception as exc:  # noqa: BLE001 - reported below
            responses[i] = exc

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        for t in threads:
            t.start()
        # Wait until every request is inside the server: its photo received and decoded (then it is queued,
        # running or answered).
        while True:
            metrics = httpx.get(url + "/metrics", timeout=5).text
            if metric_value(metrics, "fmpn_stage_duration_seconds_count", stage="decode") >= n:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.01)
        in_flight = n - metric_value(metrics, "fmpn_http_requests_total", route="/v1/predictions")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    for r in responses:
        assert isinstance(r, httpx.Response), f"a request in flight at SIGTERM failed: {r!r}"
        assert r.status_code == 200 and len(r.json()["faces"]) == 6, r.text
    assert in_flight >= 2, f"only {in_flight} request(s) were still in flight at SIGTERM"
    # uvicorn re-raises the signal after a clean shutdown: "terminated by SIGTERM" (or 0 as a container's PID 1)
    assert proc.returncode in (0, -signal.SIGTERM), out[-3000:]
    assert "Application shutdown complete" in out and "Finished server process" in out, out[-3000:]
    assert "Traceback" not in out and "ERROR" not in out, out[-3000:]
