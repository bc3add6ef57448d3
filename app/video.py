"""A video's response, built frame by frame: the same for ``fmpn video`` and ``POST /v1/videos:predict``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.errors import ApiError
from app.schemas import ModelRef, VideoFrameResult, VideoMeta, VideoResponse, track_results, video_frame_result
from fmpn.inference import ImagePrediction
from fmpn.video import FaceTracker, Frame, VideoInfo, frames_to_sample


class VideoAnalysis:
    def __init__(
        self, info: VideoInfo, model: dict[str, Any], fps: float | None, max_frames: int | None, include_mask: bool
    ) -> None:
        self.info = info
        self.model = model
        self.fps = fps
        self.max_frames = max_frames
        self.include_mask = include_mask
        self.tracker = FaceTracker()
        self.frames: list[VideoFrameResult] = []

    def add(self, frame: Frame, prediction: ImagePrediction) -> list[int]:
        """Follow the frame's faces on from the frames before; the track id of each."""
        faces = prediction.faces
        ids = self.tracker.update(frame.index, frame.time_s, [f.box for f in faces], [f.probabilities for f in faces])
        self.frames.append(
            video_frame_result(frame, prediction, ids, self.model["classes"], include_mask=self.include_mask)
        )
        return ids

    def response(self, timings_ms: dict[str, float] | None = None) -> VideoResponse:
        expected = frames_to_sample(self.info, self.fps)
        analysed = len(self.frames)
        cut = self.max_frames is not None and analysed >= self.max_frames
        truncated = cut and (expected is None or expected > analysed)
        warnings = []
        if truncated:
            warnings.append(
                f"only the first {analysed} sampled frames were analysed (max_frames={self.max_frames})"
                + (f" of {expected}" if expected else "")
            )
        if analysed == 0:
            warnings.append("the video has no frame that could be decoded")
        info = self.info
        return VideoResponse(
            video=VideoMeta(
                width=info.width,
                height=info.height,
                fps=round(info.fps, 4),
                frames=info.frames,
                duration_s=round(info.duration_s, 4),
            ),
            model=ModelRef(name=self.model["name"], profile=self.model["profile"], version=self.model["version"]),
            sampled_fps=None if self.fps is None or (info.fps > 0 and self.fps >= info.fps) else self.fps,
            frames_analysed=analysed,
            frames_truncated=truncated,
            frames=self.frames,
            tracks=track_results(self.tracker.tracks, self.model["classes"]),
            warnings=warnings,
            timings_ms={k: round(v, 2) for k, v in (timings_ms or {}).items()},
        )


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
