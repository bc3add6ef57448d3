"""The demo page in headless Chromium (Debian's chromium, driven by Playwright) against a real
uvicorn server on 127.0.0.1: upload a real photo, wait for the bars and the overlay, keep a screenshot
(runs/screenshots/demo-page.png, not committed: it shows third-party photos); then a video, streamed: the
face tracks' cards and their boxes over the clip (runs/screenshots/demo-video.png); then the camera, Chromium's
fake camera playing the group photo (runs/screenshots/demo-camera.png)."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_data
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    live_server,
    metric_value,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_array,
    photo_jpeg,
)

CHROMIUM = Path(os.environ.get("FMPN_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = Path(__file__).resolve().parents[1] / "runs" / "screenshots" / "demo-page.png"


def _need(condition: bool, message: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install -e '.[dev]')")
    _need(CHROMIUM.exists(), f"{CHROMIUM} not found (apt-get install -y chromium)")
    with sync_playwright() as pw:
        yield pw


def _launch(playwright: Any, *extra_args: str) -> Any:
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*args, *extra_args])


@pytest.fixture(scope="module")
def browser(playwright):
    browser = _launch(playwright)
    yield browser
    browser.close()


def test_demo_page_shows_bars_and_overlay(browser) -> None:
    photo = require_data("photos", f"{GROUP}.jpg")
    srv = live_server()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        external = []
        local = (srv.url, "blob:" + srv.url)
        page.on("request", lambda req: None if req.url.startswith(local) else external.append(req.url))
        console = []
        page.on("console", lambda msg: console.append(msg.text))
        answer = page.goto(srv.url + "/")
        assert page.title() == "FMPN facial-expression demo"
        # Not to be framed (clickjacking the API-key field), and only the page's own script runs: no 'unsafe-inline',
        # its inline script allowed by its hash (it runs: everything below works), no inline event handler.
        policy = answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in policy
        script_src = re.search(r"script-src ([^;]*)", policy).group(1)
        assert re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", script_src), policy
        handlers = (
            "() => [...document.querySelectorAll('*')].flatMap(e => e.getAttributeNames()).filter(n => /^on/.test(n))"
        )
        assert page.evaluate(handlers) == []
        page.evaluate("() => { window.stayed = true; }")
        page.press("#apikey", "Enter")  # the form's implicit submission: the listener keeps the page where it is
        page.wait_for_timeout(500)
        assert page.url == srv.url + "/" and page.evaluate("() => window.stayed === true")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#faces .face", timeout=120_000)
        page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0", timeout=120_000)
        faces = page.locator("#faces .face")
        assert faces.count() == 6
        bars = page.locator("#faces .face .bar")
        assert bars.count() == 6 * 7
        widths = [float(w.rstrip("%")) for w in bars.evaluate_all("els => els.map(e => e.style.width)")]
        assert all(0 <= w <= 100 for w in widths)
        assert abs(sum(widths[:7]) - 100) < 1.0  # one face's probabilities fill 100 %
        assert page.locator("#faces .face .bar.top").count() == 6
        natural = page.evaluate("() => [overlay.naturalWidth, overlay.naturalHeight]")
        assert natural == [1200, 630]
        assert "6 faces found" in page.inner_text("#status")
        page.wait_for_function(
            "() => [...document.querySelectorAll('img.mask')].every(m => m.naturalWidth === 64)", timeout=60_000
        )
        assert not external, f"the page fetched from elsewhere: {external}"
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000
        # "one face crop": the same photo again, classified whole, without the detector
        page.check("#crop")
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('one face crop')", timeout=120_000
        )
        page.wait_for_function("() => document.querySelectorAll('#faces .face').length === 1", timeout=60_000)
        assert "not a square face crop" in page.inner_text("#status")  # the service's warning is shown
        # a bad file shows the service's error message
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "image/png", "buffer": b"not a png"}])
        page.wait_for_selector("#status.error", timeout=60_000)
        assert "not_an_image" in page.inner_text("#status")
        assert not [m for m in console if "Content Security Policy" in m], console
        page.close()
    finally:
        srv.stop()


# Pixels drawn on each face card's timeline canvas.
_PAINTED_TIMELINES = """() => [...document.querySelectorAll('#faces canvas.timeline')].map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })"""

_TRANSFER = """([b64, name, type, event]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const ev = event === "drop"
    ? new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true });
  document.body.dispatchEvent(ev);
}"""


def test_demo_page_takes_a_dropped_or_pasted_photo(browser) -> None:
    require_data("photos", f"{GROUP}.jpg")
    srv = live_server()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(srv.url + "/")
        group = base64.b64encode(photo_jpeg(GROUP)).decode()
        page.evaluate(_TRANSFER, [group, "group.jpg", "image/jpeg", "drop"])
        page.wait_for_function("() => document.querySelectorAll('#faces .face').length === 6", timeout=120_000)
        assert "6 faces found" in page.inner_text("#status")
        page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0", timeout=60_000)
        # The group photo dropped again, its answer held back, then a portrait pasted: the group's request is
        # aborted (its answer would come last and cover the portrait's). The portrait's overlay and mask fail: no
        # overlay is left on screen (not the group's), and its card says that its mask could not be loaded.
        held = []
        photo_post, png_get = re.compile(r"/v1/predictions\?"), re.compile(r"\.png(\?|$)")
        page.route(photo_post, lambda route: route.continue_() if held else held.append(route))
        page.route(png_get, lambda route: route.fulfill(status=500, body="no"))
        page.evaluate(_TRANSFER, [group, "group.jpg", "image/jpeg", "drop"])
        page.wait_for_function("() => !document.getElementById('overlay').hasAttribute('src')", timeout=10_000)
        portrait = base64.b64encode(photo_jpeg(PORTRAITS[1])).decode()
        with page.expect_event("requestfailed", lambda r: "/v1/predictions?" in r.url, timeout=10_000) as aborted:
            page.evaluate(_TRANSFER, [portrait, "image.png", "image/jpeg", "paste"])  # a screenshot or copied image
        assert aborted.value.method == "POST" and len(held) == 1
        page.wait_for_function("() => document.querySelectorAll('#faces .face').length === 1", timeout=120_000)
        page.wait_for_selector("#faces .face .note", timeout=30_000)
        assert page.inner_text("#faces .face .note").startswith("Mask not loaded: HTTP 500")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('Overlay failed')")
        assert page.evaluate("() => [overlay.getAttribute('src'), overlay.naturalWidth]") == [None, 0]
        page.unroute(photo_post)
        page.unroute(png_get)
        # "one face crop" runs the pasted photo again (not the file input's, which holds none)
        with page.expect_request(lambda r: "detect=false" in r.url, timeout=10_000):
            page.check("#crop")
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('one face crop')", timeout=120_000
        )
        assert page.locator("#faces .face").count() == 1
        page.evaluate(_TRANSFER, [base64.b64encode(b"notes").decode(), "notes.txt", "text/plain", "drop"])
        page.wait_for_selector("#status.error", timeout=10_000)
        assert "not a photo or a video" in page.inner_text("#status")
        page.close()
    finally:
        srv.stop()


def test_demo_page_streams_a_video_and_lists_its_faces(browser) -> None:
    clip = require_data("photos", "clip-multiface.mp4")
    srv = live_server(detect_max_side=960, max_video_frames=8)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(srv.url + "/")
        page.set_input_files("#file", str(clip))
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('frames analysed')", timeout=120_000
        )
        status = page.inner_text("#status")
        assert "8 frames analysed" in status and "max_frames=8" in status, status
        cards = page.locator("#faces .face")
        assert cards.count() >= 4  # the people walking through the first 8 frames, one card each
        titles = cards.locator("h2").all_inner_texts()
        assert all(t.startswith("Face ") and "averaged" in t for t in titles), titles
        assert all("analysed frame" in w for w in cards.locator(".when").all_inner_texts())
        # a face seen in two frames or more has its expressions drawn over time, a line a class
        painted = page.evaluate(_PAINTED_TIMELINES)
        frames = [int(re.search(r"in (\d+) analysed", w).group(1)) for w in cards.locator(".when").all_inner_texts()]
        assert len(painted) == sum(n >= 2 for n in frames) >= 4 and min(painted) > 100, (painted, frames)
        timeline = page.locator("#faces canvas.timeline").first  # over the whole clip: a click seeks to its moment
        box = timeline.bounding_box()
        timeline.click(position={"x": box["width"] * 0.5, "y": box["height"] / 2})
        seeked = page.evaluate("() => document.getElementById('video').currentTime")
        assert abs(seeked - 0.5 * 4.2) < 0.15, seeked
        widths = [
            float(w.rstrip("%")) for w in cards.first.locator(".bar").evaluate_all("els => els.map(e => e.style.width)")
        ]
        assert len(widths) == 7 and abs(sum(widths) - 100) < 1.0
        assert page.locator("#overlay").is_hidden() and page.locator("#video-box").is_visible()
        # The clip itself plays in the page (the page's CSP lets the <video> load the local file's blob: URL).
        page.wait_for_function("() => document.getElementById('video').readyState >= 2", timeout=60_000)
        size = page.evaluate("() => ['videoWidth', 'videoHeight'].map(k => document.getElementById('video')[k])")
        assert size == [1920, 1080]
        assert "cannot play" not in page.inner_text("#status")
        # The boxes of the frame at 0.5 s (frame 10 of the clip) drawn over the video, whatever the browser can play.
        drawn = page.evaluate("() => window.fmpnDrawAt(0.5)")
        assert drawn >= 4
        painted = page.evaluate(
            "() => { const c = document.getElementById('boxes');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
        )
        assert painted > 1000
        shot = SCREENSHOT.with_name("demo-video.png")
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # A photo after the video: back to the overlay view.
        page.set_input_files("#file", str(require_data("photos", f"{GROUP}.jpg")))
        page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0", timeout=120_000)
        assert page.locator("#video-box").is_hidden() and page.locator("#overlay").is_visible()
        # Faces followed between whole-frame detections when asked: the same people, fewer detections.
        page.check("#follow")
        with page.expect_request(lambda r: "/v1/videos:predict" in r.url) as request:
            page.set_input_files("#file", str(clip))
        assert request.value.url.endswith("/v1/videos:predict?detect_every=5")
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('frames analysed')", timeout=120_000
        )
        assert "8 frames analysed" in page.inner_text("#status") and cards.count() >= 4
        page.close()
    finally:
        srv.stop()


def _camera_file(path: Path, frames: int = 5) -> Path:
    """The group photo as a Y4M clip of still frames: what Chromium's fake camera plays."""
    import cv2

    rgb = photo_array(GROUP, max_side=1200)
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
    h, w = rgb.shape[:2]
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F5:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv.tobytes())
    return path


def test_demo_page_classifies_the_camera_live(playwright, tmp_path) -> None:
    require_data("photos", f"{GROUP}.jpg")
    camera = _camera_file(tmp_path / "camera.y4m")
    fake_camera = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    )
    srv = live_server()
    try:
        browser = _launch(playwright, *fake_camera)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(srv.url + "/")
            page.click("#camera")
            page.wait_for_function("() => window.fmpnLive.frames >= 3", timeout=120_000)
            assert page.locator("#video-box").is_visible() and page.locator("#overlay").is_hidden()
            assert page.inner_text("#camera") == "Stop the camera"
            status = page.inner_text("#status")
            assert status.startswith("Live: 6 faces") and "frames/s" in status, status
            # the same six faces frame after frame: six cards, ids 0-5 kept (no new id per frame)
            titles = page.locator("#faces .face h2").all_inner_texts()
            assert sorted(int(t.split(":")[0].removeprefix("Face ")) for t in titles) == list(range(6)), titles
            assert all("smoothed" in t for t in titles)
            assert page.evaluate("() => window.fmpnLive.nextId") == 6
            painted = page.evaluate(_PAINTED_TIMELINES)  # each face's smoothed expressions over its last frames
            assert len(painted) == 6 and min(painted) > 100, painted
            # frames go out as small as the faces allow: the smallest face near 60 px, 320-960 px a side
            box = "(w) => ({box: {x1: 0, x2: w}})"
            sides = page.evaluate(
                f"() => {{ const f = {box}; const n = window.fmpnNextSide;"
                " return [n(640, []), n(640, [f(150), f(300)]), n(640, [f(45)]), n(900, [f(10)])]; }"
            )
            assert sides == [640, 320, 864, 960]
            side = page.evaluate("() => window.fmpnLive.side")
            assert 640 < side <= 960, side  # the group's faces are about 50 px at 640: sent larger, all six found
            assert re.search(r"ms a frame of \d+ px", page.inner_text("#status"))
            page.wait_for_function(  # each card shows the face's motion mask of the last frame
                "() => [...document.querySelectorAll('#faces img.mask')]"
                ".filter(m => m.naturalWidth === 64).length === 6",
                timeout=30_000,
            )
            painted = page.evaluate(
                "() => { const c = document.getElementById('boxes');"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
            )
            assert painted > 1000
            page.screenshot(path=str(SCREENSHOT.with_name("demo-camera.png")), full_page=True)
            # the frames were sent with keep=false: the service holds none of them
            with srv.client() as http:
                metrics = http.get("/metrics").text
            assert metric_value(metrics, "fmpn_results_stored") == 0
            assert metric_value(metrics, "fmpn_images_total") >= 3
            page.click("#camera")
            page.wait_for_function("() => document.getElementById('status').textContent.includes('Camera off')")
            assert page.evaluate("() => document.getElementById('video').srcObject === null")
            assert page.inner_text("#camera") == "Use the camera"
            page.close()
        finally:
            browser.close()
    finally:
        srv.stop()
