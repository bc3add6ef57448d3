"""Videos: frames sampled at a steady rate, and faces followed from frame to frame.

A clip's expressions are read per person, not per frame: one frame's prediction flickers (a blink, motion blur),
while the probabilities averaged over a face's track say what that person showed. Tracking is deliberately simple
(nearest box of a similar size, greedy): MTCNN finds the same face again in the next frame, and people in a clip
move less than a face width in a fifth of a second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # fmpn.inference imports this module (container_format)
    from fmpn.detect import Face
    from fmpn.inference import ImagePrediction, Predictor

DEFAULT_FPS = 5.0  # frames analysed a second of video


class VideoDecodeError(ValueError):
    """A file that cannot be read as a video, or a video over a limit; ``code`` as the service's errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # as the container says; 0 when it does not
    frames: int  # as the container says (an estimate for some formats); 0 when unknown

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


MAX_TIME_S = 1e9  # seconds (31 years): a bound on window times, so that no time overflows in frame arithmetic


@dataclass(frozen=True)
class Window:
    """The stretch of a video to analyse, in seconds of its timeline: frames from ``start_s`` (included) to
    ``end_s`` (excluded; None: to the end). Windows end to end (0-60, 60-120, ...) cover a long video with no
    frame twice, each under a request's frame limit, and report frames by their number in the whole video."""

    start_s: float = 0.0
    end_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and 0 <= self.start_s <= MAX_TIME_S):
            raise ValueError(f"start must be 0 to {MAX_TIME_S:.0f} seconds, got {self.start_s}")
        if self.end_s is not None and not (math.isfinite(self.end_s) and self.start_s < self.end_s <= MAX_TIME_S):
            raise ValueError(
                f"end must be after start ({self.start_s:g} s) and at most {MAX_TIME_S:.0f}, got {self.end_s}"
            )

    @property
    def whole(self) -> bool:
        return self.start_s == 0 and self.end_s is None

    @property
    def where(self) -> str:
        """For messages about the frames found: "" for the whole video, " between start and end" for a window."""
        return "" if self.whole else " between start and end"

    def check(self, info: VideoInfo) -> None:
        """A window that holds no frame (as far as the container says) is refused: it would analyse nothing."""
        if info.frames <= 0 or info.fps <= 0:
            return
        first, stop = self.frame_range(info)
        if first >= info.frames:
            raise VideoDecodeError(
                "start_past_end",
                f"start {self.start_s:g} s is at or past the end of the video ({info.duration_s:.3f} s long, its last "
                f"frame at {(info.frames - 1) / info.fps:.3f} s)",
            )
        if first >= stop:
            raise VideoDecodeError(
                "empty_window",
                f"no frame between start {self.start_s:g} s and end {self.end_s:g} s (the video has a frame every "
                f"{1 / info.fps:.3f} s)",
            )

    def frame_range(self, info: VideoInfo) -> tuple[int, int]:
        """The numbers of its first frame and of the frame after its last, from the container's rate and count."""
        first = math.ceil(self.start_s * info.fps - 1e-6)
        stop = info.frames if self.end_s is None else min(info.frames, math.ceil(self.end_s * info.fps - 1e-6))
        return first, max(first, stop)


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based frame number in the video
    time_s: float  # its presentation time
    rgb: np.ndarray  # (H, W, 3) uint8


# Containers read, by their first bytes. FFmpeg would open far more, playlists among them (HLS, concat), which name
# other files and URLs for it to read: an uploaded "video" must not make the service read a local file or fetch a URL.
FORMATS = "MP4/MOV, WebM/MKV or AVI"
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


def container_format(head: bytes) -> str | None:
    """The container of a file from its first 12 bytes: "mp4", "matroska" or "avi"; None for anything else."""
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def _capture(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError("not_found", f"no such video file: {path}")
    with path.open("rb") as f:
        head = f.read(12)
    if container_format(head) is None:
        raise VideoDecodeError("unsupported_video", f"not a video file of a supported format ({FORMATS})")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not capture.isOpened() or width <= 0 or height <= 0:
        capture.release()
        raise VideoDecodeError(
            "invalid_video", "the video cannot be decoded (corrupt, truncated, or a codec FFmpeg lacks)"
        )
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0
    frames = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    return capture, VideoInfo(width=width, height=height, fps=fps, frames=frames)


def every_frame(info: VideoInfo, fps: float | None) -> bool:
    """Whether sampling at ``fps`` takes every frame: no rate asked, or one at least the video's own."""
    return fps is None or (info.fps > 0 and fps >= info.fps)


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate and frame count, without decoding a frame."""
    capture, info = _capture(path)
    capture.release()
    return info


# Frames in a row that may fail to decode before the rest of a video is given up: one corrupt frame (a damaged
# upload, a dropped packet) must not end the analysis, and a stream that is broken from there on must.
MAX_BAD_FRAMES = 25


@dataclass
class DecodeReport:
    """What decoding a video met on the way, for the answer's warnings (``sample_frames`` fills it in)."""

    decoded: int = 0  # frames read (grabbed), sampled or not
    skipped: int = 0  # frames that could not be decoded and were passed over
    gave_up_at: int | None = None  # frame index where MAX_BAD_FRAMES failures in a row ended the video early
    decode_limit: int | None = None  # set when ``max_decoded`` stopped the decoding

    def warnings(self, info: VideoInfo) -> list[str]:
        notes = []
        if self.skipped:
            notes.append(f"frames that could not be decoded were skipped: {self.skipped}")
        if self.gave_up_at is not None:
            of = f" of the {info.frames} the container lists" if info.frames > self.gave_up_at else ""
            notes.append(
                f"decoding stopped at frame {self.gave_up_at}{of}: {MAX_BAD_FRAMES} frames in a row could not be read"
            )
        if self.decode_limit is not None:
            notes.append(
                f"decoding stopped after {self.decode_limit} frames (the limit for this request): "
                "the analysis covers the video up to there; ask for a higher fps or a shorter video"
            )
        return notes


def sample_frames(
    path: str | Path,
    fps: float | None = DEFAULT_FPS,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    max_decoded: int | None = None,
    report: DecodeReport | None = None,
    window: Window | None = None,
    resume: Resume | None = None,
) -> Iterator[Frame]:
    """The video's frames at ``fps`` a second: the first at or after each point of a 1/fps grid of times from the
    ``window``'s start (None, or at least the video's own rate: every frame), at most ``max_frames`` of them.
    Frames in between are grabbed, not converted. A video whose frames are larger than ``max_pixels`` is refused
    before any is decoded. A window's start is sought (FFmpeg decodes from the keyframe before it), not decoded to.

    ``resume``: go on after the frame an earlier run of the same sampling gave last (``fmpn video --resume``): that
    frame is sought (the video is read from its first frame where the seek lands past it), the frames up to it are
    passed over, and the frames after it are those the earlier run would have gone on to, numbered as it would have.

    A frame that cannot be decoded is skipped (up to MAX_BAD_FRAMES in a row); ``max_decoded`` bounds the frames
    decoded in all (a very low ``fps`` would decode a whole long video for a few frames); ``report`` says what
    happened."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    report = report if report is not None else DecodeReport()
    window = window if window is not None else Window()
    capture, info = _capture(path)
    try:
        window.check(info)
        if max_pixels is not None and info.width * info.height > max_pixels:
            raise VideoDecodeError(
                "too_many_pixels",
                f"the video's frames are {info.width}x{info.height} = {info.width * info.height} pixels; "
                f"the limit is {max_pixels}",
            )
        # Frames are picked by their timestamps on a grid of 1/fps: phones record at a variable frame rate, where
        # frame numbers are not times. Every frame when no rate is asked or the video's is no higher.
        every = every_frame(info, fps)
        picked = index = grabbed = 0
        # A window's start is sought, unless a decoding budget is set (the service): seeking decodes from the keyframe
        # before the start, uncounted, and one keyframe can precede millions of tiny frames; there the frames before
        # the start are read one by one, within the budget.
        slack = 1.5 / info.fps if info.fps > 0 else 0.1  # how far past the start the first frame after it may be
        # A resumed sampling seeks a frame and a half before the last frame given, so that it lands before it (and
        # before the first of frames that share its time); where it lands at or past it, the video is read from its
        # first frame.
        target = window.start_s if resume is None else max(window.start_s, resume.time_s - slack)
        sought = target > 0 and max_decoded is None
        sought = sought and capture.set(cv2.CAP_PROP_POS_MSEC, target * 1000.0)
        if sought:
            index = max(0, int(capture.get(cv2.CAP_PROP_POS_FRAMES)))  # frames keep their number in the video
        stop = window.frame_range(info)[1] if info.frames > 0 and info.fps > 0 else 0  # 0: not known
        bad = 0  # frames in a row that could not be decoded, not yet followed by one that could
        next_time = window.start_s
        if resume is not None and not every:  # refined from the exact time of the earlier run's last frame, below
            next_time = _next_grid_time(window.start_s, resume.time_s, fps)
        passing, at_time = (
            resume is not None,
            0,
        )  # passing the frames the earlier run sampled; its frames at its last time
        while max_frames is None or picked < max_frames:
            if max_decoded is not None and grabbed >= max_decoded:
                if not 0 < stop <= index:  # frames left (as far as the container says): cut here
                    report.decode_limit = max_decoded
                break
            grabbed += 1
            ok, wanted, time_s, bgr = capture.grab(), False, 0.0, None
            if ok:
                msec = capture.get(cv2.CAP_PROP_POS_MSEC)
                if math.isfinite(msec) and msec >= 0:
                    time_s = msec / 1000.0
                else:
                    time_s = index / info.fps if info.fps > 0 else 0.0
            if sought:  # the first frame after seeking: OpenCV seeks by the container's frame rate, and in a video
                # of variable rate it can land past the start (frames lost) or past the end: read from the first frame
                sought = False
                late = time_s > target + slack if resume is None else round(time_s, 4) >= resume.time_s
                if not ok or late:
                    capture.release()
                    capture, _ = _capture(path)
                    index = 0
                    continue
            passed = False
            if ok and passing:
                rounded = round(time_s, 4)  # as the earlier run's answer gave it
                passed = rounded < resume.time_s or (rounded == resume.time_s and at_time < resume.at_time)
                at_time += rounded == resume.time_s
                if rounded == resume.time_s and at_time == resume.at_time:  # its last frame: go on from there
                    passing = False
                    index = resume.frame  # as the earlier run numbered it (a seek's frame numbers are estimates)
                    if not every:
                        next_time = _next_grid_time(window.start_s, time_s, fps)
                passing = passing and passed
            if ok and not passed:
                if window.end_s is not None and time_s + 1e-6 >= window.end_s:
                    report.skipped += bad
                    break
                wanted = time_s + 1e-6 >= next_time  # every frame: the window's start, never moved
                if wanted:
                    ok, bgr = capture.retrieve()
                    ok = ok and bgr is not None
            index += 1
            if not ok:  # the end of the video, or a frame FFmpeg could not read: the ones after may be fine
                bad += 1
                if bad < MAX_BAD_FRAMES:
                    continue
                reached = index - bad
                if info.frames - reached >= MAX_BAD_FRAMES:  # far short of the container's count: not its end
                    report.gave_up_at = reached
                break
            report.skipped += bad  # failures followed by a good frame: frames passed over, not the end
            bad = 0
            report.decoded += 1
            if wanted:
                yield Frame(index=index - 1, time_s=time_s, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                picked += 1
                if not every:  # the next grid point after this frame (a long frame may pass several)
                    next_time = _next_grid_time(window.start_s, time_s, fps)
    finally:
        capture.release()


@dataclass(frozen=True)
class Resume:
    """Where an earlier run of the same sampling stopped: the number and time of the last frame it gave (the time as
    its answer gave it, rounded to 0.1 ms), and how many of the frames it gave have that time (more than one only
    where frames share a timestamp)."""

    frame: int
    time_s: float
    at_time: int = 1


def _next_grid_time(start_s: float, time_s: float, fps: float) -> float:
    """The first point of the 1/fps grid from ``start_s`` after a frame sampled at ``time_s``."""
    return start_s + (math.floor((time_s - start_s) * fps + 1e-6) + 1) / fps


# ----------------------------------------------------------------------------------------------
# Tracks
# ----------------------------------------------------------------------------------------------


@dataclass
class Track:
    id: int
    first_frame: int
    first_time_s: float
    last_frame: int
    last_time_s: float
    box: tuple[float, float, float, float]  # the latest
    frames: int = 1  # sampled frames the face is in
    probability_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missed: int = 0  # sampled frames since it was last seen
    velocity: tuple[float, float] = (0.0, 0.0)  # centre motion a sampled frame, pixels

    def predicted_centre(self) -> tuple[float, float]:
        """Where its face should be in the next sampled frame, moving on as it moved."""
        x, y, _ = _centre_and_size(self.box)
        steps = self.missed + 1
        return x + self.velocity[0] * steps, y + self.velocity[1] * steps

    @property
    def probabilities(self) -> np.ndarray:
        """Its faces' class probabilities, averaged over the frames it is in."""
        return self.probability_sum / max(self.frames, 1)


def longest_first(tracks: Iterable[Track]) -> list[Track]:
    """Tracks longest first (then earliest): the people who were in the clip longest lead."""
    return sorted(tracks, key=lambda t: (-t.frames, t.first_frame, t.id))


def _centre_and_size(box: Sequence[float]) -> tuple[float, float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0, max(x2 - x1, y2 - y1, 1e-6)


class FaceTracker:
    """Gives each face of a frame the id of the face it continues.

    A face continues a track when its centre lies within ``max_shift`` face sizes of where the track's face should
    be (its last centre moved on by its last motion) and its size is within a factor ``max_scale`` of the track's
    last box. The closest pairs are matched first, a track counted half a face size further for each frame it was not
    seen in: a face that was just there is likelier than one that left frames ago. A track not seen for more
    than ``max_gap`` sampled frames ends, and a face that matches no track starts a new one.
    """

    def __init__(self, max_shift: float = 1.5, max_scale: float = 1.4, max_gap: int = 5) -> None:
        self.max_shift = max_shift
        self.max_scale = max_scale
        self.max_gap = max_gap
        self.tracks: list[Track] = []
        self._live: list[Track] = []

    def update(
        self, frame: int, time_s: float, boxes: Sequence[Sequence[float]], probabilities: Sequence[np.ndarray]
    ) -> list[int]:
        """The track id of each face (``boxes``, ``probabilities`` in the same order) of the next sampled frame."""
        return self._record(frame, time_s, boxes, probabilities, self._match(boxes))

    def replay(
        self,
        frame: int,
        time_s: float,
        boxes: Sequence[Sequence[float]],
        probabilities: Sequence[np.ndarray],
        ids: Sequence[int],
    ) -> None:
        """A sampled frame whose faces an earlier run already gave track ids (``fmpn video --resume``): its tracks
        are taken as they were, so that the frames after go on as they would have. Ids that could not have come
        from this tracker (a track that had ended, or a new id out of turn) are refused."""
        live = {track.id for track in self._live}
        given: list[int | None] = []
        new = len(self.tracks)
        for i in ids:
            if i in live and i not in given:
                given.append(i)
            elif i == new:
                given.append(None)
                new += 1
            else:
                raise ValueError(f"frame {frame}: track {i} does not go on from the frames before it")
        self._record(frame, time_s, boxes, probabilities, given)

    def _match(self, boxes: Sequence[Sequence[float]]) -> list[int | None]:
        """Each face's live track (its id), closest pairs first; None: a new face."""
        pairs: list[tuple[float, int, int]] = []
        for t, track in enumerate(self._live):
            _, _, ts = _centre_and_size(track.box)
            tx, ty = track.predicted_centre()
            for f, box in enumerate(boxes):
                fx, fy, fs = _centre_and_size(box)
                shift = math.hypot(fx - tx, fy - ty) / max(ts, fs)
                if shift <= self.max_shift and max(fs / ts, ts / fs) <= self.max_scale:
                    pairs.append((shift + 0.5 * track.missed, t, f))
        ids: list[int | None] = [None] * len(boxes)
        taken: set[int] = set()
        for _, t, f in sorted(pairs):
            if t in taken or ids[f] is not None:
                continue
            taken.add(t)
            ids[f] = self._live[t].id
        return ids

    def _record(
        self,
        frame: int,
        time_s: float,
        boxes: Sequence[Sequence[float]],
        probabilities: Sequence[np.ndarray],
        ids: list[int | None],
    ) -> list[int]:
        """Move each matched track on to its face, age the unmatched ones, and start a track for each new face."""
        live = {track.id: track for track in self._live}
        for f, i in enumerate(ids):
            if i is None:
                continue
            track = live[i]
            (x0, y0, _), (x1, y1, _) = _centre_and_size(track.box), _centre_and_size(boxes[f])
            track.velocity = ((x1 - x0) / (track.missed + 1), (y1 - y0) / (track.missed + 1))
            track.box = tuple(float(v) for v in boxes[f])
            track.last_frame, track.last_time_s = frame, time_s
            track.frames += 1
            track.probability_sum = track.probability_sum + np.asarray(probabilities[f], dtype=np.float64)
            track.missed = 0
        matched = set(ids)
        for track in self._live:
            if track.id not in matched:
                track.missed += 1
        self._live = [track for track in self._live if track.missed <= self.max_gap]
        result = []
        for f, box in enumerate(boxes):
            i = ids[f]
            if i is None:
                track = Track(
                    id=len(self.tracks),
                    first_frame=frame,
                    first_time_s=time_s,
                    last_frame=frame,
                    last_time_s=time_s,
                    box=tuple(float(v) for v in box),
                    probability_sum=np.asarray(probabilities[f], dtype=np.float64).copy(),
                )
                self.tracks.append(track)
                self._live.append(track)
                i = track.id
            result.append(i)
        return result


class FaceFollower:
    """Where to look for the faces of each next sampled frame: the whole frame every ``detect_every`` sampled frames
    (and after a frame with no face to follow, or one where a followed face was lost), near the faces of the frame
    before otherwise.

    A whole-frame detection runs MTCNN over the frame's image pyramid, most of a video's time on a CPU; looking near
    the known faces costs a fraction of it (``Predictor.detect_near``). A face that enters between two whole-frame
    detections is found at the next one, ``detect_every`` sampled frames later at most. ``detect_every`` 1: every
    frame whole, the faces a photo of the frame gets.
    """

    def __init__(self, detect_every: int = 1) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {detect_every}")
        self.detect_every = detect_every
        self._since = 0  # sampled frames since the last whole-frame detection
        self._boxes: list[tuple[float, float, float, float]] = []

    def near(self) -> list[tuple[float, float, float, float]] | None:
        """The boxes to look near in the next frame; None: detect the whole frame."""
        if self._since == 0 or not self._boxes:
            return None
        return list(self._boxes)

    def seen(self, boxes: Iterable[Sequence[float]], whole: bool) -> None:
        """The faces of that frame (``whole``: found by a whole-frame detection). A face lost while followed (it
        moved too far, or turned away) makes the next frame a whole-frame one."""
        boxes = [tuple(float(v) for v in box[:4]) for box in boxes]
        lost = not whole and len(boxes) < len(self._boxes)
        self._boxes = boxes
        self._since = 1 if whole else self._since + 1
        if lost or self._since >= self.detect_every:
            self._since = 0


def follow_faces(
    predictor: Predictor, image: np.ndarray, near: Sequence[Sequence[float]] | None
) -> tuple[list[Face], bool]:
    """A frame's faces, and whether the whole frame was detected: whole when ``near`` is None, else looked for near
    those boxes (:class:`FaceFollower`), and the whole frame after all when one of them is lost there (a face that
    moved more than a face width, or turned away): found in this frame, under its track, not one frame late as a new
    track (the crowd clip at 5 frames a second, followed every 5 frames: of the 108 faces every-frame detection finds,
    15 missed and 14 tracks for its 11 people before; 6 missed and 12 tracks with this, ``bench/bench_video.py``)."""
    if near is None:
        return predictor.detect([image])[0], True
    faces = predictor.detect_near(image, near)
    if len(faces) < len(near):
        return predictor.detect([image])[0], True
    return faces, False


def predict_frames(
    predictor: Predictor,
    frames: Iterable[Frame],
    batch: int = 8,
    max_faces: int | None = None,
    timings: dict[str, float] | None = None,
    detect_every: int = 1,
    follower: FaceFollower | None = None,
) -> Iterator[tuple[Frame, ImagePrediction]]:
    """Each frame with its faces' predictions, ``batch`` frames through the predictor at a time (one forward for
    all their faces; on a GPU the detector batches them too). ``detect_every`` above 1: the whole frame is detected
    every that many frames, the faces followed in between (:class:`FaceFollower`; ``follower``: one that has seen
    the frames before, as ``fmpn video --resume`` replays it)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    follower = follower if follower is not None else FaceFollower(detect_every)
    limit = max_faces if max_faces is not None else predictor.max_faces  # the faces followed: those classified
    chunk: list[Frame] = []
    found: list[list[Face]] = []
    wholes: list[bool] = []

    def run() -> Iterator[tuple[Frame, ImagePrediction]]:
        given = found if detect_every > 1 else None
        predictions = predictor.predict([f.rgb for f in chunk], max_faces=max_faces, timings=timings, faces=given)
        for prediction, whole in zip(predictions, wholes, strict=True):
            prediction.whole_frame = whole
        return zip(list(chunk), predictions, strict=True)

    for frame in frames:
        chunk.append(frame)
        whole = True
        if detect_every > 1:  # each frame's faces from the frame before's: found one frame at a time
            t0 = time.perf_counter()
            faces, whole = follow_faces(predictor, frame.rgb, follower.near())
            follower.seen([f.box for f in (faces if limit is None else faces[:limit])], whole=whole)
            found.append(faces)
            if timings is not None:
                timings["detect"] = timings.get("detect", 0.0) + time.perf_counter() - t0
        wholes.append(whole)
        if len(chunk) >= batch:
            yield from run()
            chunk.clear()
            found.clear()
            wholes.clear()
    if chunk:
        yield from run()


@dataclass
class FramePrediction:
    """One sampled frame of a video: its faces (largest first) and each face's track id, in the same order."""

    index: int  # 0-based frame number in the video
    time_s: float
    prediction: ImagePrediction
    tracks: list[int]


@dataclass
class VideoPrediction:
    """A whole video's answer: its sampled frames and the faces followed through them (longest track first), each
    with its probabilities averaged over its frames (``Track.probabilities``)."""

    info: VideoInfo
    frames: list[FramePrediction]
    tracks: list[Track]


def predict_video(
    predictor: Predictor,
    path: str | Path,
    fps: float | None = DEFAULT_FPS,
    max_frames: int | None = None,
    detect_every: int = 1,
    batch: int = 8,
    window: Window | None = None,
) -> VideoPrediction:
    """The faces of a video file's frames sampled at ``fps`` (None: every frame) within ``window`` (None: all of
    it), followed from frame to frame: ``fmpn video`` in Python. Every frame's result is kept: for a long video,
    ``max_frames``, a window at a time, or :func:`predict_frames` with a :class:`FaceTracker` of your own, which
    keeps nothing."""
    info = probe_video(path)
    tracker = FaceTracker()
    frames = []
    for frame, prediction in predict_frames(
        predictor, sample_frames(path, fps, max_frames, window=window), batch, detect_every=detect_every
    ):
        faces = prediction.faces
        ids = tracker.update(frame.index, frame.time_s, [f.box for f in faces], [f.probabilities for f in faces])
        frames.append(FramePrediction(frame.index, frame.time_s, prediction, ids))
    return VideoPrediction(info, frames, longest_first(tracker.tracks))


def frames_to_sample(info: VideoInfo, fps: float | None, window: Window | None = None) -> int | None:
    """How many frames ``sample_frames`` yields with no ``max_frames``; None when the container does not say."""
    if info.frames <= 0 or info.fps <= 0:
        return None
    first, stop = (window or Window()).frame_range(info)
    if every_frame(info, fps):
        return stop - first
    return math.ceil((stop - first) / (info.fps / fps) - 1e-9)
