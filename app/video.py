"""A video's response, built frame by frame: the same for ``fmpn video`` and ``POST /v1/videos:predict``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from app.errors import ApiError
from app.schemas import ModelRef, VideoFrameResult, VideoMeta, VideoResponse, track_results, video_frame_result
from fmpn.inference import ImagePrediction
from fmpn.video import DecodeReport, FaceTracker, Frame, VideoInfo, Window, every_frame, frames_to_sample


class VideoAnalysis:
    """Frames in, the response out: the whole JSON (``response``), or its head, frames and summary one by one for
    a stream of JSON lines (``head``, ``add``, ``summary``). ``keep_frames`` False: a stream keeps no frame."""

    def __init__(
        self,
        info: VideoInfo,
        model: dict[str, Any],
        fps: float | None,
        max_frames: int | None,
        include_mask: bool,
        keep_frames: bool = True,
        window: Window | None = None,
    ) -> None:
        self.info = info
        self.window = window if window is not None else Window()
        self.model = model
        self.fps = fps
        self.max_frames = max_frames
        self.include_mask = include_mask
        self.keep_frames = keep_frames
        self.tracker = FaceTracker()
        self.frames: list[VideoFrameResult] = []
        self.analysed = 0
        self.timings: dict[str, float] = {}  # seconds, by stage
        self.report = DecodeReport()  # sample_frames(..., report=analysis.report) fills it in
        self.started = time.perf_counter()

    def add(self, frame: Frame, prediction: ImagePrediction) -> VideoFrameResult:
        """The frame's result, its faces followed on from the frames before (each with its track id)."""
        faces = prediction.faces
        ids = self.tracker.update(frame.index, frame.time_s, [f.box for f in faces], [f.probabilities for f in faces])
        result = video_frame_result(frame, prediction, ids, self.model["classes"], include_mask=self.include_mask)
        self.analysed += 1
        if self.keep_frames:
            self.frames.append(result)
        return result

    def replay(self, result: VideoFrameResult) -> None:
        """A frame an earlier run analysed (``fmpn video --resume``): counted, and its faces' tracks taken as they
        were, so that the frames analysed next go on with the same tracks."""
        classes = self.model["classes"]
        faces = result.faces
        self.tracker.replay(
            result.frame,
            result.time_s,
            [(f.box.x1, f.box.y1, f.box.x2, f.box.y2) for f in faces],
            [np.array([f.probabilities[c] for c in classes]) for f in faces],
            [f.track for f in faces],
        )
        self.analysed += 1
        if self.keep_frames:
            self.frames.append(result)

    def head(self) -> dict[str, Any]:
        info = self.info
        return {
            "video": VideoMeta(
                width=info.width,
                height=info.height,
                fps=round(info.fps, 4),
                frames=info.frames,
                duration_s=round(info.duration_s, 4),
            ),
            "model": ModelRef(name=self.model["name"], profile=self.model["profile"], version=self.model["version"]),
            "sampled_fps": None if every_frame(info, self.fps) else self.fps,
            "start_s": self.window.start_s,
            "end_s": self.window.end_s,
        }

    def summary(self) -> dict[str, Any]:
        expected = frames_to_sample(self.info, self.fps, self.window)
        analysed = self.analysed
        cut = self.max_frames is not None and analysed >= self.max_frames and (expected is None or expected > analysed)
        truncated = cut or self.report.decode_limit is not None
        warnings = []
        if cut:
            warnings.append(
                f"only the first {analysed} sampled frames were analysed (max_frames={self.max_frames})"
                + (f" of {expected}" if expected else "")
            )
        warnings.extend(self.report.warnings(self.info))
        if analysed == 0:
            warnings.append(f"the video has no frame{self.window.where} that could be decoded")
        timings = {k: round(v * 1000, 2) for k, v in self.timings.items()}
        timings["total"] = round((time.perf_counter() - self.started) * 1000, 2)
        return {
            "frames_analysed": analysed,
            "frames_truncated": truncated,
            "tracks": track_results(self.tracker.tracks, self.model["classes"]),
            "warnings": warnings,
            "timings_ms": timings,
        }

    def response(self) -> VideoResponse:
        return VideoResponse(**self.head(), frames=self.frames, **self.summary())


def json_line(kind: str, fields: dict[str, Any] | BaseModel) -> bytes:
    """One line of a video's JSON-lines stream: ``{"type": kind, ...fields}``."""
    return (json.dumps({"type": kind, **to_jsonable_python(fields)}, separators=(",", ":")) + "\n").encode()


@contextmanager
def in_memory_file(data: bytes) -> Iterator[str]:
    """A path FFmpeg can open holding ``data``: an anonymous file in memory (Linux's memfd), so that an upload never
    touches the disk; gone when closed."""
    if not hasattr(os, "memfd_create"):  # the service's images are Linux; elsewhere use `fmpn video`
        raise ApiError(501, "videos_unsupported", "video uploads need Linux (memfd_create); use fmpn video FILE")
    fd = os.memfd_create("fmpn-video", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
