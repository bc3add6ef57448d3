"""Shared pieces of the service tests (no tests here): a random-init checkpoint, the real photos
downscaled in memory, and a real uvicorn server on 127.0.0.1 in a background thread.

Imported by the test_app_*, test_inference and test_demo_page modules (pytest puts tests/ on the
path). Everything expensive is built once per process.
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from conftest import require_data
from PIL import Image, ImageOps

FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
PORTRAITS = ("portrait-angelina_jolie", "portrait-kate_siegel", "portrait-paul_rudd", "portrait-shea_whigham")
GROUP = "group-multiface"
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "fmpn-cpu-fer2013.safetensors"

# Test settings: detection on a <= 640 px copy keeps MTCNN fast on 2 cores; the model uncompiled, as compiling
# its four batch shapes adds 10-30 s to each start (test_app_cli's `fmpn serve` and test_inference compile).
FAST = {"detect_max_side": 640, "warmup": True, "compile": "off"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while a service module runs (MTCNN slows down many times when the 2 cores are
    oversubscribed), restored afterwards so other modules keep theirs. Import it into a module to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def checkpoint_path() -> Path:
    """A randomly initialised CPU-profile FMPN with the FER2013 classes, saved once per test process.

    The generator's convs are re-drawn with He init (the original tiny-gain init makes an untrained
    mask a flat 0.5), so masks vary over the face and the mask tests see real structure.
    """
    from fmpn.checkpoint import save_checkpoint
    from fmpn.models import build_fmpn
    from fmpn.profiles import CPU

    torch.manual_seed(0)
    model = build_fmpn(CPU, len(FER2013_CLASSES))
    with torch.no_grad():
        for m in model.generator.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    folder = Path(tempfile.mkdtemp(prefix="fmpn-test-ckpt-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # 45 MB a test process, left behind before
    return save_checkpoint(
        folder / "fmpn-random-cpu.safetensors", model.eval(), CPU, FER2013_CLASSES, config={"name": "random-cpu"}
    )


@functools.cache
def _photo(name: str, max_side: int) -> Image.Image:
    path = require_data("photos", f"{name}.jpg")
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
    return im


def photo(name: str, max_side: int = 640) -> Image.Image:
    """A real photo from ../shared/data/photos, upright, downscaled in memory (never copied to disk)."""
    return _photo(name, max_side).copy()


def photo_array(name: str, max_side: int = 640) -> np.ndarray:
    return np.asarray(_photo(name, max_side))


def encode(im: Image.Image, fmt: str = "JPEG", **params: Any) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and "quality" not in params:
        params["quality"] = 90
    im.save(buf, fmt, **params)
    return buf.getvalue()


@functools.cache
def photo_jpeg(name: str, max_side: int = 640) -> bytes:
    return encode(_photo(name, max_side))


class LiveServer:
    """The app on a real uvicorn server bound to 127.0.0.1 (an ephemeral port), in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        if wait_ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while True:
                r = client.get("/readyz")
                if r.status_code == 200:
                    return r.json()
                if r.json().get("state") == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"service not ready: {r.json()}")
                time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def __enter__(self) -> LiveServer:
        return self if self.thread.is_alive() else self.start()  # live_server() has started it

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_settings(**overrides: Any):
    from app.settings import Settings

    values: dict[str, Any] = {"weights": checkpoint_path(), **FAST}
    values.update(overrides)
    return Settings(**values)


def live_server(wait_ready: bool = True, **overrides: Any) -> LiveServer:
    from app.main import create_app

    return LiveServer(create_app(make_settings(**overrides))).start(wait_ready=wait_ready)


def iou(a, b) -> float:  # noqa: ANN001 - two boxes (x1, y1, x2, y2)
    """Intersection over union of two boxes (torchvision's box_iou)."""
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([a[:4]], dtype=torch.float64), torch.tensor([b[:4]], dtype=torch.float64))[0, 0])


def error_of(response: httpx.Response) -> dict:
    """The {"code", "message", "request_id"} of a JSON error response (asserting its shape)."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert "Traceback" not in body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"], body  # the id the log lines carry
    return body["error"]


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_the_random_checkpoint_is_removed_when_its_process_exits() -> None:
    code = "import test_app_helpers as h; print(h.checkpoint_path())"
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", code], cwd=tests, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.name == "fmpn-random-cpu.safetensors" and not path.parent.exists()
