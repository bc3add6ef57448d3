"""Model reloads without a restart: POST /v1/models:reload (admin key) and the weights file watched
(FMPN_RELOAD_POLL_S). The new model is built beside the one serving and swapped in once warmed up; a request
is answered wholly by the model it started on, a video too; a file that does not load leaves the old model
serving; a failed start is fixed by a reload."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from test_app_helpers import (  # noqa: F401 - one_torch_thread is an autouse fixture
    FER2013_CLASSES,
    checkpoint_path,
    error_of,
    live_server,
    make_settings,
    metric_value,
    one_torch_thread,
    photo_jpeg,
)

from app.client import AsyncClient, Client
from fmpn.classes import CKPLUS

ADMIN = {"X-API-Key": "admin-secret"}


@functools.cache
def ckplus_checkpoint() -> Path:
    """A second random model, with CK+'s classes and its own version: which model answered shows in the reply."""
    from fmpn.checkpoint import save_checkpoint
    from fmpn.models import build_fmpn
    from fmpn.profiles import CPU

    torch.manual_seed(1)
    folder = Path(tempfile.mkdtemp(prefix="fmpn-test-reload-"))
    return save_checkpoint(
        folder / "ckplus.safetensors",
        build_fmpn(CPU, len(CKPLUS)).eval(),
        CPU,
        list(CKPLUS),
        config={"name": "random-ckplus", "version": "ckplus-v2"},
        storage="int8",
    )


def replace_with(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target`` the way a deployment should: a new file renamed over the old."""
    tmp = target.with_suffix(".partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    shutil.copyfile(checkpoint_path(), path)
    return path


def test_reload_swaps_the_model_and_a_bad_file_keeps_the_old_one(weights: Path) -> None:
    with live_server(weights=weights, admin_api_key="admin-secret") as server, server.client() as client:
        before = client.get("/v1/models").json()["models"][0]
        assert before["classes"] == FER2013_CLASSES and before["loaded_at"] > 0

        # the admin key, and only it
        assert error_of(client.post("/v1/models:reload"))["code"] == "missing_api_key"
        assert error_of(client.post("/v1/models:reload", headers={"X-API-Key": "wrong"}))["code"] == "invalid_api_key"

        # the same file: nothing to do, unless forced (here through the Python clients)
        with Client(server.url) as fmpn:
            same = fmpn.reload_model("admin-secret")
        assert same["reloaded"] is False and same["model"]["version"] == before["version"]
        forced = asyncio.run(_reload_async(server.url, force=True))
        assert forced["reloaded"] is True and forced["model"]["version"] == before["version"]

        replace_with(ckplus_checkpoint(), weights)
        r = client.post("/v1/models:reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reloaded"] is True and body["previous_version"] == before["version"]
        assert body["model"]["version"] == "ckplus-v2" and body["model"]["classes"] == list(CKPLUS)
        assert client.get("/v1/models").json()["models"][0]["version"] == "ckplus-v2"
        answer = client.post("/v1/predictions", files={"image": ("p.jpg", photo_jpeg("portrait-paul_rudd"))}).json()
        assert answer["model"]["version"] == "ckplus-v2"
        assert set(answer["faces"][0]["probabilities"]) == set(CKPLUS)

        # a broken file: 422 naming it, and the model loaded before keeps serving
        weights.write_bytes(b"not a checkpoint at all")
        bad = client.post("/v1/models:reload", headers=ADMIN)
        err = error_of(bad)
        assert bad.status_code == 422 and err["code"] == "reload_failed", bad.text
        assert "ckplus-v2" in err["message"] and "keeps serving" in err["message"]
        assert client.get("/readyz").json()["ready"] is True
        again = client.post("/v1/predictions", files={"image": ("p.jpg", photo_jpeg("portrait-paul_rudd"))})
        assert again.status_code == 200 and again.json()["model"]["version"] == "ckplus-v2"

        metrics = client.get("/metrics").text
        assert metric_value(metrics, "fmpn_model_reloads_total", outcome="loaded") == 2
        assert metric_value(metrics, "fmpn_model_reloads_total", outcome="unchanged") == 1
        assert metric_value(metrics, "fmpn_model_reloads_total", outcome="failed") == 1
        assert metric_value(metrics, "fmpn_model_info", version="ckplus-v2") == 1
        assert metric_value(metrics, "fmpn_model_info", version=before["version"]) == 0


async def _reload_async(url: str, force: bool) -> dict:
    async with AsyncClient(url) as fmpn:
        return await fmpn.reload_model("admin-secret", force=force)


def test_one_reload_at_a_time_and_none_without_an_admin_key(weights: Path) -> None:
    with live_server(weights=weights, admin_api_key="admin-secret") as server, server.client() as client:
        first: dict = {}
        thread = threading.Thread(
            target=lambda: first.update(r=client.post("/v1/models:reload?force=true", headers=ADMIN))
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not client.get("/readyz").json()["reloading"]:
            assert time.monotonic() < deadline and thread.is_alive(), "the reload never showed in /readyz"
            time.sleep(0.01)
        second = client.post("/v1/models:reload?force=true", headers=ADMIN)
        assert second.status_code == 409 and error_of(second)["code"] == "reload_in_progress"
        assert second.headers["retry-after"]
        # photos are answered while the new model warms up
        photo = client.post("/v1/predictions", files={"image": ("p.jpg", photo_jpeg("portrait-paul_rudd"))})
        assert photo.status_code == 200
        thread.join(60)
        assert first["r"].status_code == 200 and first["r"].json()["reloaded"] is True
        assert client.get("/readyz").json()["reloading"] is False

    with live_server(weights=weights) as server, server.client() as client:
        off = client.post("/v1/models:reload", headers=ADMIN)
        assert off.status_code == 403
        assert "FMPN_ADMIN_API_KEY" in error_of(off)["message"]


def test_a_failed_start_is_fixed_by_a_reload(tmp_path: Path) -> None:
    missing = tmp_path / "later.safetensors"
    with live_server(wait_ready=False, weights=missing, admin_api_key="admin-secret") as server:
        with server.client() as client:
            deadline = time.monotonic() + 30
            while client.get("/readyz").json()["state"] != "failed":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert error_of(client.get("/v1/models"))["code"] == "model_unavailable"
            still = client.post("/v1/models:reload", headers=ADMIN)
            assert still.status_code == 422 and "no model is serving" in error_of(still)["message"]

            shutil.copyfile(checkpoint_path(), missing)
            r = client.post("/v1/models:reload", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["reloaded"] is True and r.json()["previous_version"] is None
            assert client.get("/readyz").status_code == 200
            answer = client.post("/v1/predictions", files={"image": ("p.jpg", photo_jpeg("portrait-paul_rudd"))})
            assert answer.status_code == 200 and len(answer.json()["faces"]) == 1


def test_a_watched_file_is_reloaded_when_it_changes(weights: Path) -> None:
    with live_server(weights=weights, reload_poll_s=0.2) as server, server.client() as client:
        before = client.get("/v1/models").json()["models"][0]["version"]

        def version_after(change, timeout: float = 60.0) -> str:
            change()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                version = client.get("/v1/models").json()["models"][0]["version"]
                if version != before:
                    return version
                time.sleep(0.1)
            return before

        # a broken file is not served (the old model goes on); the good one that replaces it is
        assert version_after(lambda: weights.write_bytes(b"half a file"), timeout=2.0) == before
        assert version_after(lambda: replace_with(ckplus_checkpoint(), weights)) == "ckplus-v2"
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "fmpn_model_reloads_total", outcome="failed") >= 1
        assert metric_value(metrics, "fmpn_model_reloads_total", outcome="loaded") == 1


def test_a_video_in_progress_finishes_on_the_model_it_started_on(weights: Path, photos: Path) -> None:
    """A new release swapped in mid-video: the video's later frames are the ones its first model gives (the same
    numbers as a run with no reload), and a photo sent after the swap gets the new model: nothing mixes two models
    in one answer."""
    from app.metrics import Metrics
    from app.service import Service
    from app.video import VideoAnalysis

    original = weights.read_bytes()

    async def scenario(reload_at: int | None) -> tuple[list[dict], dict, str]:
        weights.write_bytes(original)
        service = Service(make_settings(weights=weights), Metrics())
        await service.start()
        try:
            frames = service.video_frames(
                (photos / "clip-multiface.mp4").read_bytes(), fps=5, max_frames=6, include_mask=False, max_faces=2
            )
            seen: list[dict] = []
            analysis = None
            async for item in frames:
                if isinstance(item, VideoAnalysis):
                    analysis = item
                    continue
                seen.append({face.track: face.probabilities for face in item.faces})
                if len(seen) == reload_at:  # mid-video: a new release arrives
                    replace_with(ckplus_checkpoint(), weights)
                    assert (await service.reload())["reloaded"]
            assert analysis is not None
            photo = await service.predict(
                photo_jpeg("portrait-paul_rudd"), include_mask=False, max_faces=None, base_path="/v1/predictions"
            )
            return seen, {"head": analysis.head()["model"].version, **analysis.summary()}, photo.model.version
        finally:
            await service.stop()

    alone, alone_summary, alone_version = asyncio.run(scenario(None))
    swapped, summary, version = asyncio.run(scenario(2))
    assert alone_version == alone_summary["head"] and version == "ckplus-v2"
    assert summary["head"] == alone_version
    assert len(swapped) == 6 and any(swapped[2:]), "no face in the frames after the swap"
    assert [frame.keys() for frame in swapped] == [frame.keys() for frame in alone]
    for after, before in zip(swapped, alone, strict=True):
        for track, probabilities in after.items():
            assert probabilities == pytest.approx(before[track], abs=1e-6)
    assert [t.probabilities for t in summary["tracks"]] == [t.probabilities for t in alone_summary["tracks"]]
