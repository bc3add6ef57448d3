"""The service's state: the predictor (loaded in the background), the batcher, the result store.

Start-up never crashes the process: a missing or corrupt checkpoint leaves the service up, answering
``/healthz`` and a ``/readyz`` 503 that names the reason, and logs one line (no stack trace).

A reload (``POST /v1/models:reload``, or the weights file seen changed every ``reload_poll_s``) builds and warms up
the new model beside the one serving, then swaps it in: each request is answered wholly by the model it started on
(a video's frames too), so a new release goes live without a restart and without a request lost or mixed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import torch

from app.batching import BACKGROUND_PER_BATCH, Batcher, QueueFull
from app.errors import DECODE_STATUS, ApiError
from app.metrics import Metrics
from app.render import encode_png, render_overlay
from app.request_id import current_request_id
from app.schemas import PredictionResponse, VideoFrameResult, prediction_response
from app.settings import Settings
from app.store import ResultStore, StoredResult
from app.video import VideoAnalysis, in_memory_file
from fmpn.checkpoint import CheckpointError, file_sha256
from fmpn.detect import Face
from fmpn.inference import (
    COMPILE_SETTINGS,
    DecodedImage,
    ImageDecodeError,
    ImagePrediction,
    Predictor,
    decode_image,
)
from fmpn.video import FaceFollower, Frame, VideoDecodeError, Window, follow_faces, probe_video, sample_frames

log = logging.getLogger("app")

# How long a video's frames wait for room in a full inference queue before the video is refused (503).
VIDEO_QUEUE_WAIT_S = 30.0

# Frames decoded for each frame the service may analyse (FMPN_MAX_VIDEO_FRAMES): a very low ?fps would otherwise decode
# a whole long video for a handful of frames. 60: one frame every 2 s of a 30 fps video, up to the frame limit.
DECODED_PER_ANALYSED = 60

# What loading a checkpoint raises when the file is missing, corrupt or not a model.
LOAD_ERRORS = (CheckpointError, ValueError, OSError, RuntimeError, ImportError)

T = TypeVar("T")

RENDERS_AT_ONCE = 2


def build_predictor(s: Settings) -> Predictor:
    """The in-process pipeline configured from the service settings (the service and ``fmpn predict``)."""
    return Predictor(
        s.weights,
        s.device,
        precision=s.precision,
        max_faces=s.max_faces,
        detect_max_side=s.detect_max_side,
        min_face_size=s.min_face_size,
        min_face_score=s.min_face_score,
        retry_pad=s.retry_pad,
        model_batch=s.model_batch,
        flip_average=s.flip_average,
        compile=COMPILE_SETTINGS[s.compile],
    )


async def _in_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a new thread that ends when it returns."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def target() -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=target, name="fmpn-reload", daemon=True).start()
    return await future


class Service:
    def __init__(self, settings: Settings, metrics: Metrics, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predictor: Predictor | None = predictor
        self.state = "starting"  # starting | loading | warming_up | ready | failed | stopped
        self.reason = "the model is loading"
        self.store = ResultStore(settings.result_ttl_s, settings.result_cap, settings.result_max_bytes)
        self.batcher = Batcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            on_batch=self._on_batch,
            on_dequeue=metrics.queue_wait.observe,
        )
        self.started_at = time.time()
        self.model_info: dict[str, Any] = {}
        self.reloading = False
        self._watcher: asyncio.Task | None = None
        # Overlays at most two at a time: each decodes its photo at full size (a 40-megapixel one is 120 MB, with the
        # copies rendering makes several times that), and forty at once would be gigabytes.
        self._renders = asyncio.Semaphore(RENDERS_AT_ONCE)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _build_predictor(self) -> Predictor:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        return build_predictor(self.settings)

    def _build_warm(self) -> Predictor:
        predictor = self._build_predictor()
        if self.settings.warmup:
            predictor.warmup()
        return predictor

    def _serve(self, predictor: Predictor) -> None:
        """Make ``predictor`` the one new requests get (requests already accepted keep theirs)."""
        self.predictor = predictor
        self.model_info = {**predictor.info(), "loaded_at": round(time.time(), 3)}
        self.metrics.model.info({k: str(self.model_info[k]) for k in ("name", "version", "profile", "device")})
        log.info(
            "model %s (%s, %s) ready on %s",
            self.model_info["name"],
            self.model_info["profile"],
            self.model_info["version"],
            self.model_info["device"],
        )

    async def start(self) -> None:
        """Load the checkpoint and detector, warm up, start the batcher; failures end in state 'failed'."""
        if self.settings.reload_poll_s > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="fmpn-reload-watch")
        try:
            if self.predictor is None:
                self.state, self.reason = "loading", f"loading the model from {self.settings.weights}"
                self.predictor = await self.batcher.run(self._build_predictor)  # on the thread that will run it
            if self.settings.warmup and not self.predictor.warmed_up:
                self.state, self.reason = "warming_up", "warming up the model"
                await self.batcher.run(self.predictor.warmup)
            self._serve(self.predictor)
            await self.batcher.start()
        except asyncio.CancelledError:
            self.state, self.reason = "stopped", "the service is shutting down"
            raise
        except LOAD_ERRORS as exc:
            self._fail(f"{exc}")
            return
        except Exception as exc:  # anything else: still no crash loop
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        self.state, self.reason = "ready", "ready"
        self.metrics.ready.set(1)

    async def reload(self, force: bool = False) -> dict[str, Any]:
        """Load the weights file again and serve it once it is warmed up; ``force`` False: not when its SHA-256 is
        the one serving. A file that does not load leaves the model serving as it was (422 ``reload_failed``).

        The new model is built in a thread of its own that ends with the build: a thread that had called torch and
        lived on would keep a second team of OpenMP workers competing with the inference thread's (app/batching.py).
        Also the way out of a failed start: fix the file, reload, and the service becomes ready."""
        if self.reloading:
            raise ApiError(
                409,
                "reload_in_progress",
                "a reload is already running; retry when it has finished",
                {"Retry-After": "5"},
            )
        if self.state not in ("ready", "failed"):
            self.require_ready()
        self.reloading = True
        task = asyncio.ensure_future(self._reload(force))  # finishes even if the caller goes away

        def done(t: asyncio.Future) -> None:
            self.reloading = False
            if not t.cancelled():
                t.exception()  # retrieved here when the caller has gone

        task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _reload(self, force: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        previous = self.model_info.get("version") if self.state == "ready" else None
        serving = f"the model serving ({previous}) keeps serving" if previous else "no model is serving"
        try:
            if previous and not force:
                sha = await anyio.to_thread.run_sync(file_sha256, Path(self.settings.weights))
                if sha == self.model_info["weights_sha256"]:
                    self.metrics.reloads.labels("unchanged").inc()
                    return {"reloaded": False, "previous_version": previous, "seconds": time.perf_counter() - t0}
            predictor = await _in_own_thread(self._build_warm)
        except Exception as exc:  # whatever the file does to the loader: reported, the old model serving on
            text = f"{exc}" if isinstance(exc, LOAD_ERRORS) else f"{type(exc).__name__}: {exc}"
            reason = re.sub(r"\s*\n\s*", " ", text.strip())
            self.metrics.reloads.labels("failed").inc()
            log.error("reload failed: %s (%s)", reason, serving)
            raise ApiError(422, "reload_failed", f"the weights could not be loaded: {reason}; {serving}") from None
        self._serve(predictor)
        if self.state != "ready":  # a failed start, fixed
            await self.batcher.start()
            self.state, self.reason = "ready", "ready"
            self.metrics.ready.set(1)
        self.metrics.reloads.labels("loaded").inc()
        return {"reloaded": True, "previous_version": previous, "seconds": time.perf_counter() - t0}

    async def _watch(self) -> None:
        """Every ``reload_poll_s``: a weights file whose size, time or inode changed is loaded again (unless its
        content is the one serving). A file still being copied fails to load, and changes again: the next look
        tries again."""

        def signature() -> tuple[int, int, int] | None:
            try:
                st = Path(self.settings.weights).stat()
            except OSError:
                return None
            return (st.st_size, st.st_mtime_ns, st.st_ino)

        seen = await anyio.to_thread.run_sync(signature)
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            now = await anyio.to_thread.run_sync(signature)
            if now is None or now == seen or self.reloading or self.state not in ("ready", "failed"):
                continue
            seen = now
            try:
                outcome = await self.reload()
            except ApiError as exc:  # logged by reload; the next change tries again
                log.warning("weights file changed; not reloaded: %s", exc.message)
                continue
            except Exception as exc:  # the watch goes on whatever one look meets
                log.error("weights file changed; reload failed: %s: %s", type(exc).__name__, exc)
                continue
            if outcome["reloaded"]:
                log.info("weights file changed; reloaded in %.1f s", outcome["seconds"])

    def _fail(self, reason: str) -> None:
        reason = re.sub(r"\s*\n\s*", " ", reason.strip())  # one log line and one /readyz line, whatever the text
        self.state, self.reason = "failed", f"model could not be loaded: {reason}"
        self.metrics.ready.set(0)
        log.error(
            "%s (the service stays up; /readyz answers 503 until this is fixed and it restarts or reloads)", self.reason
        )

    async def stop(self) -> None:
        self.metrics.ready.set(0)
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self.state == "ready":
            self.state, self.reason = "stopped", "the service is shutting down"
        await self.batcher.stop()

    def require_ready(self) -> None:
        if self.state == "ready":
            return
        self.metrics.rejected.labels("not_ready").inc()
        if self.state == "failed":
            raise ApiError(503, "model_unavailable", self.reason)
        raise ApiError(503, "not_ready", f"the service is not ready yet: {self.reason}", {"Retry-After": "2"})

    # -- inference ----------------------------------------------------------------------------

    def _run_batch(self, images: list[Any], options: list[dict[str, Any]]) -> tuple[list[Any], dict[str, float]]:
        """A batch through the model each image was submitted for (option ``predictor``): one group, unless a
        reload swapped models while the batch filled."""
        timings: dict[str, float] = {}
        groups: dict[int, list[int]] = {}
        for i, option in enumerate(options):
            groups.setdefault(id(option["predictor"]), []).append(i)
        results: list[Any] = [None] * len(images)
        for members in groups.values():
            predictor = options[members[0]]["predictor"]
            done = self._run_group(predictor, [images[i] for i in members], [options[i] for i in members], timings)
            for i, result in zip(members, done, strict=True):
                results[i] = result
        return results, timings

    def _run_group(
        self, predictor: Predictor, images: list[Any], options: list[dict[str, Any]], timings: dict[str, float]
    ) -> list[Any]:
        limits = [o.get("max_faces") for o in options]
        detects = [o.get("detect", True) for o in options]
        try:
            faces, wholes = self._followed(predictor, images, options, timings)
            return _whole(
                predictor.predict(images, max_faces=limits, timings=timings, detect=detects, faces=faces), wholes
            )
        except Exception as exc:
            if len(images) == 1:
                raise
            log.error(
                "batch of %d failed (%s: %s); retrying its images one by one", len(images), type(exc).__name__, exc
            )
        # One bad image must not fail the others: run them alone, failures become per-image errors.
        results: list[Any] = []
        for image, option, limit, detect in zip(images, options, limits, detects, strict=True):
            try:
                faces, wholes = self._followed(predictor, [image], [option], timings)
                done = predictor.predict([image], max_faces=limit, timings=timings, detect=detect, faces=faces)
                results.extend(_whole(done, wholes))
            except Exception as exc:
                results.append(exc)
        return results

    def _followed(
        self, predictor: Predictor, images: list[Any], options: list[dict[str, Any]], timings: dict[str, float]
    ) -> tuple[list[list[Face] | None], list[bool]]:
        """The faces of video frames followed from the frame before (option ``near``: where its faces were;
        ``fmpn.video.FaceFollower``), None for the images to detect whole; and whether each image's faces were
        looked for in all of it (a followed frame where a face was lost is detected whole after all)."""
        t0 = time.perf_counter()
        found = [
            (None, True) if o.get("near") is None else follow_faces(predictor, image, o["near"])
            for image, o in zip(images, options, strict=True)
        ]
        timings["detect"] = timings.get("detect", 0.0) + time.perf_counter() - t0
        return [faces for faces, _ in found], [whole for _, whole in found]

    def _on_batch(self, n: int, timings: dict[str, float]) -> None:
        m = self.metrics
        m.batch_size.observe(n)
        m.batch_faces.observe(timings.get("faces", 0))
        for stage in ("detect", "align", "model"):
            if stage in timings:
                m.stage_latency.labels(stage).observe(timings[stage])

    async def decode(self, data: bytes) -> DecodedImage:
        t0 = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(decode_image, data, self.settings.max_pixels)
        except ImageDecodeError as exc:
            raise self._undecodable(exc) from None
        finally:
            self.metrics.stage_latency.labels("decode").observe(time.perf_counter() - t0)

    def _undecodable(self, exc: ImageDecodeError | VideoDecodeError) -> ApiError:
        """An upload that cannot be decoded: counted by its reason, answered with its status."""
        self.metrics.rejected.labels(exc.code).inc()
        return ApiError(DECODE_STATUS.get(exc.code, 400), exc.code, exc.message)

    def queue_full(self, detail: str, retry_after: int) -> ApiError:
        """The 503 for work the inference queue has no room for: counted, with the wait to retry after."""
        self.metrics.rejected.labels("queue_full").inc()
        return ApiError(
            503, "queue_full", f"the service is busy: {detail}; retry later", {"Retry-After": str(retry_after)}
        )

    async def predict(
        self,
        data: bytes,
        *,
        include_mask: bool,
        max_faces: int | None,
        base_path: str,
        detect: bool = True,
        keep: bool = True,
    ) -> PredictionResponse:
        """One uploaded image -> its response (stored under a fresh id for the overlay GETs unless ``keep`` is
        False: a live camera's frames would only push other clients' results out of the store).
        ``detect`` False: the image is one face crop, classified whole (no detector)."""
        self.require_ready()
        predictor, model_info = self.predictor, self.model_info  # this request's model, whatever a reload does
        t0 = time.perf_counter()
        limit = self.settings.max_faces if max_faces is None else min(max_faces, self.settings.max_faces)
        self.batcher.incoming += 1  # tells the batcher another image is on its way
        try:
            decoded = await self.decode(data)
        finally:
            self.batcher.incoming -= 1
        t1 = time.perf_counter()
        try:
            prediction, meta = await self.batcher.submit(
                decoded.rgb, predictor=predictor, max_faces=limit, detect=detect
            )
        except ApiError:
            raise
        except QueueFull as exc:
            raise self.queue_full(f"the inference queue is full (queue_size={exc.size})", exc.retry_after) from None
        except Exception as exc:  # inference failed for this image: logged, answered as JSON
            log.error("inference failed (request %s): %s: %s", current_request_id(), type(exc).__name__, exc)
            self.metrics.rejected.labels("inference_failed").inc()
            raise ApiError(500, "inference_failed", "inference failed for this image; the error was logged") from None
        self.metrics.images.labels("true" if prediction.detected else "false").inc()
        if prediction.detected:
            self.metrics.faces_per_image.observe(prediction.faces_detected)
        notes = list(decoded.warnings)
        if keep:
            size = self.store.footprint(data, prediction)
            if not self.store.fits(size):  # kept, it would evict every other result and then itself
                keep = False
                notes.append(
                    f"the photo was too large to keep for the overlay and mask GETs ({size} bytes with its masks, "
                    f"over the limit of {self.store.max_bytes} bytes, FMPN_RESULT_MAX_BYTES): id and overlay_url "
                    "are null"
                )
        result_id = self.store.new_id() if keep else None
        expires = time.time() + self.settings.result_ttl_s if keep else None
        timings = {
            "decode": (t1 - t0) * 1000,
            "queue": meta["queue"] * 1000,
            "detect": meta.get("detect", 0.0) * 1000,
            "model": meta.get("model", 0.0) * 1000,
        }

        def build() -> PredictionResponse:
            return prediction_response(
                result_id,
                prediction,
                model_info,
                include_mask=include_mask,
                max_faces=limit,
                warnings=notes,
                base_url=f"{base_path}/{result_id}" if keep else None,
                expires_at=round(expires, 3) if expires else None,
                timings_ms=timings,
            )

        response = await anyio.to_thread.run_sync(build)
        response.timings_ms["total"] = round((time.perf_counter() - t0) * 1000, 2)
        if result_id is None:
            return response
        stored = StoredResult(
            image_bytes=data,
            prediction=prediction,
            classes=list(model_info["classes"]),
            response=response.model_dump(mode="json", exclude={"faces": {"__all__": {"mask"}}}),
        )
        self.store.put(result_id, stored)
        return response

    async def video_frames(
        self,
        data: bytes,
        *,
        fps: float | None,
        max_frames: int | None,
        include_mask: bool,
        max_faces: int | None,
        keep_frames: bool = True,
        detect_every: int = 1,
        window: Window | None = None,
    ) -> AsyncIterator[VideoAnalysis | VideoFrameResult]:
        """One uploaded video: first its ``VideoAnalysis`` (once the video opened; a bad video raises ApiError
        before), then each sampled frame's result as it is predicted; the analysis then holds the tracks.
        Its frames go to the batcher as many at a time as a batch takes of them (one), behind the photos waiting
        (``app/batching.py``): a video slows the service down but does not hold it."""
        self.require_ready()
        predictor, model_info = self.predictor, self.model_info  # every frame on this model, whatever a reload does
        cap = self.settings.max_video_frames
        frames_cap = cap if max_frames is None else min(max_frames, cap)
        limit = self.settings.max_faces if max_faces is None else min(max_faces, self.settings.max_faces)
        with in_memory_file(data) as path:
            try:
                info = await anyio.to_thread.run_sync(probe_video, path)
            except VideoDecodeError as exc:
                raise self._undecodable(exc) from None
            analysis = VideoAnalysis(info, model_info, fps, frames_cap, include_mask, keep_frames, window)
            timings = analysis.timings
            timings.update(decode=0.0, queue=0.0, detect=0.0, model=0.0)
            frames = sample_frames(
                path,
                fps,
                frames_cap,
                self.settings.max_pixels,
                max_decoded=cap * DECODED_PER_ANALYSED,
                report=analysis.report,
                window=analysis.window,
            )
            follower = FaceFollower(detect_every)
            # A decode still running in its thread when the request is cancelled (the client left) keeps the
            # decoder: closing it waits for that decode to end instead of failing ("generator already executing").
            decoding = threading.Lock()

            def decode() -> list[Frame]:
                with decoding:
                    return list(itertools.islice(frames, BACKGROUND_PER_BATCH))

            def close() -> None:
                with decoding:
                    frames.close()

            try:
                first = True
                while True:
                    t1 = time.perf_counter()
                    try:
                        chunk = await anyio.to_thread.run_sync(decode)
                    except VideoDecodeError as exc:
                        raise self._undecodable(exc) from None
                    timings["decode"] += time.perf_counter() - t1
                    if first:  # the first frames decoded: the video is good (limits checked, frames readable)
                        if not chunk and analysis.report.decode_limit is not None:  # a start far into the video
                            self.metrics.rejected.labels("decode_limit").inc()
                            raise ApiError(
                                413,
                                "decode_limit",
                                f"start {analysis.window.start_s:g} s lies past the {analysis.report.decode_limit} "
                                "frames the service decodes per request; analyse long videos with fmpn video --start",
                            )
                        if not chunk:
                            self.metrics.rejected.labels("invalid_video").inc()
                            raise ApiError(
                                400,
                                "invalid_video",
                                f"the video has no frame{analysis.window.where} that could be decoded (corrupt or "
                                "empty)",
                            )
                        yield analysis
                        first = False
                    if not chunk:
                        break
                    results = await self._submit_frames(predictor, chunk, limit, follower)
                    # A batch's stage times are shared by its images: each frame counts its share. The frames of a
                    # chunk wait in the queue together: the chunk counts its longest wait.
                    timings["queue"] += max(meta["queue"] for _, meta in results)
                    for key in ("detect", "model"):
                        timings[key] += sum(
                            meta.get(key, 0.0) / max(1, meta.get("batch_size", 1)) for _, meta in results
                        )
                    self.metrics.video_frames.inc(len(chunk))
                    for frame, (prediction, _) in zip(chunk, results, strict=True):
                        yield await anyio.to_thread.run_sync(analysis.add, frame, prediction)
            finally:
                await anyio.to_thread.run_sync(close)
        self.metrics.videos.inc()

    async def _submit_frames(
        self, predictor: Predictor, chunk: list[Frame], limit: int, follower: FaceFollower
    ) -> list[tuple[ImagePrediction, dict[str, float]]]:
        """Queue a chunk of frames once there is room for all of them (a video already accepted is not dropped for
        a full queue; it waits, up to VIDEO_QUEUE_WAIT_S). Each frame's faces are looked for where ``follower``
        says, so a chunk's frames go one after the other."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VIDEO_QUEUE_WAIT_S
        while self.batcher.room < len(chunk):
            if loop.time() > deadline:
                raise self.queue_full(
                    f"the inference queue (queue_size={self.settings.queue_size}) had no room for the video's frames "
                    f"for {VIDEO_QUEUE_WAIT_S:g} s",
                    self.batcher.retry_after(),
                )
            await asyncio.sleep(0.05)
        try:
            results = []
            for frame in chunk:
                near = follower.near()
                result = await self.batcher.submit(
                    frame.rgb, background=True, predictor=predictor, max_faces=limit, detect=True, near=near
                )
                follower.seen([face.box for face in result[0].faces], whole=result[0].whole_frame)
                results.append(result)
            return results
        except QueueFull as exc:  # another request took the room first
            raise self.queue_full(f"the inference queue is full (queue_size={exc.size})", exc.retry_after) from None
        except ApiError:
            raise
        except Exception as exc:
            log.error(
                "inference failed on a video frame (request %s): %s: %s", current_request_id(), type(exc).__name__, exc
            )
            self.metrics.rejected.labels("inference_failed").inc()
            raise ApiError(
                500, "inference_failed", "inference failed for a frame of this video; the error was logged"
            ) from None

    def get_result(self, result_id: str) -> StoredResult:
        stored = self.store.get(result_id)
        if stored is None:
            raise ApiError(
                404,
                "result_not_found",
                f"no result {result_id!r}: unknown, or expired (results are kept {self.settings.result_ttl_s:g} s, "
                f"at most {self.settings.result_cap} of them and {self.settings.result_max_bytes} bytes of photos; "
                "result_ttl_s / result_cap / result_max_bytes)",
            )
        return stored

    async def overlay(
        self, stored: StoredResult, *, alpha: float, boxes: bool, labels: bool, max_side: int | None
    ) -> bytes:
        def work() -> bytes:
            t0 = time.perf_counter()
            rgb = decode_image(stored.image_bytes, self.settings.max_pixels).rgb
            out = render_overlay(
                rgb, stored.prediction, stored.classes, alpha=alpha, boxes=boxes, labels=labels, max_side=max_side
            )
            png = encode_png(out)
            self.metrics.stage_latency.labels("render").observe(time.perf_counter() - t0)
            return png

        async with self._renders:
            return await anyio.to_thread.run_sync(work)

    def refresh_gauges(self) -> None:
        self.metrics.queue_depth.set(self.batcher.depth)
        self.metrics.results_stored.set(len(self.store))
        self.metrics.results_bytes.set(self.store.total_bytes)


def _whole(predictions: list[ImagePrediction], wholes: list[bool]) -> list[ImagePrediction]:
    """Each prediction marked with whether its faces were looked for in the whole image."""
    for prediction, whole in zip(predictions, wholes, strict=True):
        prediction.whole_frame = whole
    return predictions
