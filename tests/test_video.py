"""Videos: frame sampling, face tracks, ``fmpn video`` and ``POST /v1/videos:predict`` on the real multi-face clip."""

from __future__ import annotations

import itertools
import json
import struct

import cv2
import numpy as np
import pytest
from conftest import require_data
from test_app_helpers import (
    checkpoint_path,
    error_of,
    iou,
    live_server,
    metric_value,
    one_torch_thread,  # noqa: F401  (autouse)
)

from cli.main import main
from fmpn.inference import Predictor
from fmpn.video import (
    DecodeReport,
    FaceFollower,
    FaceTracker,
    Resume,
    VideoDecodeError,
    Window,
    container_format,
    frames_to_sample,
    predict_frames,
    probe_video,
    sample_frames,
)

CLIP = ("photos", "clip-multiface.mp4")  # 1920x1080, 25 fps, 105 frames, people walking towards the camera


def _clip():
    return require_data(*CLIP)


# -- tracks (synthetic boxes) -------------------------------------------------------------------


def _box(cx: float, cy: float, size: float) -> tuple[float, float, float, float]:
    return (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)


def _p(k: int) -> np.ndarray:
    p = np.full(7, 0.05)
    p[k] = 0.7
    return p


def test_faces_keep_their_track_while_they_move() -> None:
    tracker = FaceTracker()
    ids = []
    for step in range(6):  # one face walks 1.3 face sizes a frame (beyond the first step's reach without motion:
        # 1.5), a second stands still; the list order swaps every frame, as MTCNN's largest-first order does
        faces = [_box(100 + 130 * step, 300, 100), _box(900, 300, 60)]
        probs = [_p(0), _p(3)]
        if step % 2:
            faces, probs = faces[::-1], probs[::-1]
        got = tracker.update(step * 5, step * 0.2, faces, probs)
        ids.append(got[::-1] if step % 2 else got)
    assert ids == [[0, 1]] * 6
    assert [t.frames for t in tracker.tracks] == [6, 6]
    np.testing.assert_allclose(tracker.tracks[0].probabilities, _p(0))
    assert (tracker.tracks[1].first_frame, tracker.tracks[1].last_frame) == (0, 25)


def test_a_replayed_run_goes_on_with_the_same_tracks() -> None:
    # Three faces, one leaving after frame 2 (its track ends a frame later) and one arriving at frame 4; the first
    # run's ids replayed into a fresh tracker for frames 0-3 must leave it where the first tracker was: frames 4-6
    # get the same ids.
    def frame(step: int) -> tuple[list, list]:
        faces = [_box(100 + 60 * step, 300, 100), _box(700, 300 + 40 * step, 80)]
        if step <= 2:
            faces.append(_box(1200, 200, 120))
        if step >= 4:
            faces.append(_box(400, 700, 90))
        return faces, [_p(k % 7) for k in range(len(faces))]

    first, again = FaceTracker(max_gap=0), FaceTracker(max_gap=0)
    ids = [first.update(step, step * 0.2, *frame(step)) for step in range(7)]
    for step in range(4):
        again.replay(step, step * 0.2, *frame(step), ids[step])
    assert [again.update(step, step * 0.2, *frame(step)) for step in range(4, 7)] == ids[4:] == [[0, 1, 3]] * 3
    assert [(t.id, t.frames, t.first_frame, t.last_frame) for t in again.tracks] == [
        (t.id, t.frames, t.first_frame, t.last_frame) for t in first.tracks
    ]
    for mine, theirs in zip(again.tracks, first.tracks, strict=True):
        np.testing.assert_array_equal(mine.probability_sum, theirs.probability_sum)
    # Ids that this tracker could not have given: a track that ended (2, gone since frame 2), a new one out of turn.
    for bad, message in [([0, 1, 2], "frame 4: track 2 does not go on"), ([0, 1, 4], "frame 4: track 4 does not")]:
        tracker = FaceTracker(max_gap=0)
        for step in range(4):
            tracker.replay(step, step * 0.2, *frame(step), ids[step])
        with pytest.raises(ValueError, match=message):
            tracker.replay(4, 0.8, *frame(4), bad)


def test_a_new_face_starts_a_track_and_a_gone_one_ends() -> None:
    tracker = FaceTracker(max_gap=2)
    assert tracker.update(0, 0.0, [_box(100, 100, 50)], [_p(0)]) == [0]
    assert tracker.update(1, 0.2, [], []) == []
    assert tracker.update(2, 0.4, [], []) == []
    assert tracker.update(3, 0.6, [_box(100, 100, 50)], [_p(0)]) == [0]  # gone 2 frames: the same face
    for frame in (4, 5, 6):
        tracker.update(frame, frame * 0.2, [], [])
    assert tracker.update(7, 1.4, [_box(100, 100, 50)], [_p(0)]) == [1]  # gone 3 > max_gap: a new track
    assert tracker.update(8, 1.6, [_box(100, 100, 50), _box(400, 100, 50)], [_p(0), _p(1)]) == [1, 2]


def test_a_face_of_another_size_or_far_away_is_another_face() -> None:
    tracker = FaceTracker()
    tracker.update(0, 0.0, [_box(100, 100, 50)], [_p(0)])
    assert tracker.update(1, 0.2, [_box(100, 100, 90)], [_p(0)]) == [1]  # 1.8x the size
    assert tracker.update(2, 0.4, [_box(100, 100, 90), _box(400, 400, 50)], [_p(0), _p(0)]) == [1, 2]


def test_a_face_seen_last_frame_wins_over_one_gone_for_frames() -> None:
    """The clip's case: a small face left three frames ago and its extrapolated position lands nearer a face than
    the track that was there a frame ago; the recent track takes it."""
    tracker = FaceTracker()
    tracker.update(0, 0.0, [_box(500, 500, 90), _box(560, 440, 70)], [_p(0), _p(1)])
    for frame in (1, 2, 3):
        tracker.update(frame, frame * 0.2, [_box(500, 500 + 5 * frame, 90)], [_p(0)])
    assert tracker.update(4, 0.8, [_box(530, 470, 90)], [_p(0)]) == [0]


def test_faces_are_followed_between_whole_frame_detections() -> None:
    follower = FaceFollower(3)
    a, b = _box(100, 100, 40), _box(300, 100, 40)
    assert follower.near() is None  # the first frame: whole
    follower.seen([a, b], whole=True)
    assert follower.near() == [a, b]
    follower.seen([b, a], whole=False)
    assert follower.near() == [b, a]
    follower.seen([a, b], whole=False)
    assert follower.near() is None  # the third frame since: whole again
    follower.seen([a, b], whole=True)
    follower.seen([a], whole=False)  # a face lost while followed: the next frame whole
    assert follower.near() is None
    follower.seen([], whole=True)
    assert follower.near() is None  # nothing to follow
    every = FaceFollower(1)
    every.seen([a], whole=True)
    assert every.near() is None
    with pytest.raises(ValueError, match="detect_every must be at least 1, got 0"):
        FaceFollower(0)


def test_a_face_lost_while_followed_is_looked_for_in_the_whole_frame_at_once() -> None:
    """Not one frame late, when it would come back as a new track."""
    from fmpn.video import follow_faces

    class Stub:
        def __init__(self, near_finds: int) -> None:
            self.near_finds, self.calls = near_finds, []

        def detect(self, images):  # noqa: ANN001, ANN202
            self.calls.append("whole")
            return [["w1", "w2"]]

        def detect_near(self, image, boxes):  # noqa: ANN001, ANN202
            self.calls.append("near")
            return ["n"] * self.near_finds

    near = [_box(10, 10, 5), _box(40, 10, 5)]
    kept = Stub(near_finds=2)
    assert follow_faces(kept, None, near) == (["n", "n"], False) and kept.calls == ["near"]
    lost = Stub(near_finds=1)
    assert follow_faces(lost, None, near) == (["w1", "w2"], True) and lost.calls == ["near", "whole"]
    assert follow_faces(Stub(0), None, None) == (["w1", "w2"], True)


def test_following_faces_finds_the_faces_of_whole_frame_detection(monkeypatch) -> None:
    """The clip's faces, detected in every frame, then followed between whole-frame detections every 4th frame: most
    faces found again where whole-frame detection puts them, with far fewer whole-frame detections."""
    predictor = Predictor(checkpoint_path(), detect_max_side=960)
    whole_frames = []
    detect = predictor.detect
    monkeypatch.setattr(predictor, "detect", lambda images: whole_frames.append(len(images)) or detect(images))
    frames = list(sample_frames(_clip(), fps=5, max_frames=12))
    every = [p for _, p in predict_frames(predictor, frames, batch=4)]
    assert sum(whole_frames) == 12
    whole_frames.clear()
    followed = [p for _, p in predict_frames(predictor, frames, batch=4, detect_every=4)]
    assert 3 <= sum(whole_frames) < 12  # frames 0, 4, 8, and after any face lost
    assert [f.box for f in followed[0].faces] == [f.box for f in every[0].faces]
    found = same = 0
    for a, b in zip(every, followed, strict=True):
        for face in a.faces:
            match = max(b.faces, key=lambda f: iou(f.box, face.box), default=None)
            if match is not None and iou(match.box, face.box) > 0.5:
                found += 1
                same += int(np.abs(match.probabilities - face.probabilities).max() < 0.1)
    total = sum(len(p.faces) for p in every)
    assert total >= 40 and found >= 0.8 * total and same >= 0.8 * found, (total, found, same)


# -- frames -------------------------------------------------------------------------------------


def test_frames_are_sampled_at_the_asked_rate() -> None:
    clip = _clip()
    info = probe_video(clip)
    assert (info.width, info.height, info.fps, info.frames) == (1920, 1080, 25.0, 105)
    frames = list(sample_frames(clip, fps=5))
    assert [f.index for f in frames] == list(range(0, 105, 5))
    assert [f.time_s for f in frames] == pytest.approx([i / 25 for i in range(0, 105, 5)])
    assert frames[0].rgb.shape == (1080, 1920, 3) and frames[0].rgb.dtype == np.uint8
    assert frames_to_sample(info, 5) == 21
    # The fourth sampled frame is the video's 16th: decode it alone and compare (RGB, not BGR).
    capture = cv2.VideoCapture(str(clip))
    for _ in range(16):
        ok, bgr = capture.read()
    capture.release()
    np.testing.assert_array_equal(frames[3].rgb, bgr[:, :, ::-1])
    assert len(list(sample_frames(clip, fps=None))) == 105 == frames_to_sample(info, None)
    assert len(list(sample_frames(clip, fps=60))) == 105  # faster than the video: every frame
    assert [f.index for f in sample_frames(clip, fps=2, max_frames=3)] == [0, 13, 25]  # the first at or after each 12.5


def test_a_window_is_the_videos_frames_from_start_to_end() -> None:
    clip = _clip()
    info = probe_video(clip)
    every = list(itertools.islice(sample_frames(clip, fps=None, max_frames=50), 25, 50))
    window = list(sample_frames(clip, fps=None, window=Window(1.0, 2.0)))
    assert [f.index for f in window] == list(range(25, 50)) == [f.index for f in every]
    for got, want in zip(window, every, strict=True):  # the start sought, not decoded to: the same frames
        np.testing.assert_array_equal(got.rgb, want.rgb)
        assert got.time_s == pytest.approx(want.time_s)
    # Windows end to end on the sampling grid: the whole video's frames, none twice, numbered as in the video.
    pieces = [Window(0, 1.0), Window(1.0, 2.6), Window(2.6)]
    tiled = [[f.index for f in sample_frames(clip, fps=5, window=w)] for w in pieces]
    assert sum(tiled, []) == [f.index for f in sample_frames(clip, fps=5)] == list(range(0, 105, 5))
    assert [len(t) for t in tiled] == [frames_to_sample(info, 5, w) for w in pieces] == [5, 8, 8]
    # A start between two frames (4.1 s: frame 102 is at 4.08 s): the first frame at or after it.
    assert [f.index for f in sample_frames(clip, fps=None, window=Window(4.1))] == [103, 104]
    assert frames_to_sample(info, None, Window(4.1)) == 2
    # Under a decoding limit (the service's) the start is not sought: the frames before it are read, and counted.
    report = DecodeReport()
    assert list(sample_frames(clip, fps=0.1, max_decoded=10, report=report, window=Window(1.0))) == []
    assert report.decoded == 10 and report.decode_limit == 10
    short = DecodeReport()  # a window that ends before the limit is not cut by it
    budgeted = [f.index for f in sample_frames(clip, fps=None, max_decoded=40, report=short, window=Window(1.0, 1.3))]
    assert budgeted == list(range(25, 33)) and short.decode_limit is None and short.decoded == 33
    for start, end, code, message in [
        (4.2, None, "start_past_end", r"start 4.2 s is at or past the end of the video \(4.200 s long, its last frame"),
        (4.19, None, "start_past_end", "at 4.160 s"),  # after the last frame, before the container's end
        (1.01, 1.02, "empty_window", r"no frame between start 1.01 s and end 1.02 s \(the video has a frame every"),
    ]:
        with pytest.raises(VideoDecodeError, match=message) as e:
            next(sample_frames(clip, window=Window(start, end)))
        assert e.value.code == code
    for start, end, message in [
        (-1.0, None, "start must be 0 to 1000000000 seconds, got -1.0"),
        (float("nan"), None, "start must be 0 to 1000000000 seconds, got nan"),
        (1e300, None, r"start must be 0 to 1000000000 seconds, got 1e\+300"),
        (2.0, 2.0, r"end must be after start \(2 s\) and at most 1000000000, got 2.0"),
        (0.0, float("inf"), "end must be after start"),
        (0.0, 1e300, "end must be after start"),
    ]:
        with pytest.raises(ValueError, match=message):
            Window(start, end)


class _CaptureProxy:
    """A cv2.VideoCapture with a quirk of some videos' (a subclass overrides ``set`` or ``get``)."""

    def __init__(self, capture) -> None:  # noqa: ANN001 - cv2.VideoCapture
        self.capture = capture

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.capture, name)


def _wrap_captures(monkeypatch, proxy: type[_CaptureProxy]) -> list:
    """Every video ``sample_frames`` opens from now on, wrapped in ``proxy``; the list of paths opened."""
    import fmpn.video as video

    real, opened = video._capture, []

    def capture(path):  # noqa: ANN001, ANN202
        cap, info = real(path)
        opened.append(path)
        return proxy(cap), info

    monkeypatch.setattr(video, "_capture", capture)
    return opened


def _resume_after(frames: list, k: int) -> Resume:
    """Where a run that gave ``frames`` (index, time) and stopped after the k-th stands, as its answer says it."""
    time_s = round(frames[k][1], 4)
    at_time = sum(1 for _, t in frames[: k + 1] if round(t, 4) == time_s)
    return Resume(frame=frames[k][0], time_s=time_s, at_time=at_time)


def test_sampling_goes_on_after_the_frame_an_earlier_run_sampled_last() -> None:
    clip = _clip()
    # 3 a second from 0.5 s (a grid off the video's 25 frames a second), every frame, and every frame of a window
    for fps, window in [(3.0, Window(0.5)), (None, Window()), (None, Window(1.0, 2.0))]:
        whole = [(f.index, f.time_s) for f in sample_frames(clip, fps=fps, window=window)]
        for cut in (0, 3, len(whole) - 2):
            resume = _resume_after(whole, cut)
            rest = [(f.index, f.time_s) for f in sample_frames(clip, fps=fps, window=window, resume=resume)]
            assert rest == whole[cut + 1 :], (fps, window, cut)
    frames = list(sample_frames(clip, fps=5, resume=Resume(50, 2.0)))  # sought, not decoded to: the same pixels
    assert [f.index for f in frames] == list(range(55, 105, 5))
    capture = cv2.VideoCapture(str(clip))
    for _ in range(56):
        ok, bgr = capture.read()
    capture.release()
    np.testing.assert_array_equal(frames[0].rgb, bgr[:, :, ::-1])
    assert list(sample_frames(clip, fps=5, resume=Resume(100, 4.0))) == []  # the last sampled frame: nothing after


def test_a_resumed_sampling_numbers_frames_as_the_earlier_run_did(monkeypatch) -> None:
    """In a video of variable rate OpenCV's seek lands by the container's average rate: its frame numbers after a
    seek are estimates, it can land past the frame sought, and frames can share a timestamp. A resumed sampling
    must still give the frames an uninterrupted one gives after the stop, numbered as it numbers them."""
    quirks = {"late_ms": 0.0, "frames_off": 0}

    class Variable(_CaptureProxy):  # frame 31 stamped with frame 30's time; a seek that lands late or misnumbers
        sought = False

        def set(self, prop: int, value: float) -> bool:
            self.sought = prop == cv2.CAP_PROP_POS_MSEC
            return self.capture.set(prop, value + quirks["late_ms"] if self.sought else value)

        def get(self, prop: int) -> float:
            value = self.capture.get(prop)
            if prop == cv2.CAP_PROP_POS_MSEC and round(value) == 1240:
                return 1200.0
            if prop == cv2.CAP_PROP_POS_FRAMES and self.sought:
                return value + quirks["frames_off"]
            return value

    opened = _wrap_captures(monkeypatch, Variable)
    clip = _clip()
    whole = [(f.index, f.time_s) for f in sample_frames(clip, fps=None)]
    assert whole[30:32] == [(30, 1.2), (31, 1.2)]  # two frames at one time
    cases = [(0, 3, 40), (0, -2, 60), (100, 0, 15), (0, 0, 30), (0, 0, 31), (0, 4, 31), (100, 0, 30), (100, 0, 31)]
    for late_ms, frames_off, cut in cases:  # 100 ms late: on frame 31, the second frame at 1.2 s
        quirks.update(late_ms=late_ms, frames_off=frames_off)
        opened.clear()
        rest = [(f.index, f.time_s) for f in sample_frames(clip, fps=None, resume=_resume_after(whole, cut))]
        assert rest == whole[cut + 1 :], (late_ms, frames_off, cut)
        assert len(opened) == (2 if late_ms else 1)  # a seek past the frame: read again from the first frame


def test_a_seek_that_lands_past_the_start_reads_from_the_first_frame(monkeypatch) -> None:
    """OpenCV seeks by the container's frame rate: in a video of variable rate it can land past the start, which
    would lose frames. The first frame after the seek is checked, and the video read from its first frame."""

    class Overshooting(_CaptureProxy):  # as a variable-rate video does: the seek lands half a second late
        def set(self, prop: int, value: float) -> bool:
            return self.capture.set(prop, value + 500 if prop == cv2.CAP_PROP_POS_MSEC else value)

    opened = _wrap_captures(monkeypatch, Overshooting)
    frames = list(sample_frames(_clip(), fps=None, window=Window(1.0, 1.4)))
    assert [f.index for f in frames] == list(range(25, 35)) and len(opened) == 2  # opened again, read from frame 0
    assert frames[0].time_s == pytest.approx(1.0)


def _rotated_copy(clip, folder):
    """The clip as a phone records a portrait video: the same frames, a 90-degree rotation in the track header
    (tkhd's display matrix), which players and FFmpeg apply."""
    data = bytearray(clip.read_bytes())
    i = data.find(b"tkhd")
    assert data[i + 4] == 0  # version 0: 32-bit times
    matrix = i + 4 + 4 + 5 * 4 + 8 + 4 * 2
    assert struct.unpack(">9i", data[matrix : matrix + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path = folder / "portrait.mp4"
    path.write_bytes(bytes(data))
    return path


def test_a_rotated_phone_video_is_read_upright(tmp_path) -> None:
    clip = _clip()
    rotated = _rotated_copy(clip, tmp_path)
    info = probe_video(rotated)
    assert (info.width, info.height, info.frames) == (1080, 1920, 105)
    (plain,) = sample_frames(clip, max_frames=1)
    (upright,) = sample_frames(rotated, max_frames=1)
    np.testing.assert_array_equal(upright.rgb, np.rot90(plain.rgb, -1))


def test_videos_that_cannot_be_read_get_a_clear_reason(tmp_path) -> None:
    clip = _clip()
    data = clip.read_bytes()
    cases = {
        "photo.mp4": (require_data("photos", "group-multiface.jpg").read_bytes(), "unsupported_video"),
        "notes.mp4": (b"these are not frames\n" * 10, "unsupported_video"),
        # An HLS playlist naming a local file: FFmpeg would follow it; the container check refuses it unread.
        "list.m3u8": (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", None),
        "half.mp4": (data[: len(data) // 2], "invalid_video"),  # the MP4 index (moov) is at the end
    }
    for name, (content, code) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VideoDecodeError) as info:
            probe_video(path)
        assert info.value.code == (code or "unsupported_video"), name
        assert "MP4" in info.value.message or "decoded" in info.value.message
    with pytest.raises(VideoDecodeError, match="no such video file"):
        probe_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="1920x1080 = 2073600 pixels; the limit is 2000000") as info:
        next(sample_frames(clip, max_pixels=2_000_000))
    assert info.value.code == "too_many_pixels"
    with pytest.raises(ValueError, match="fps must be a positive number"):
        next(sample_frames(clip, fps=0))
    assert container_format(data[:12]) == "mp4"
    assert container_format(b"\x1a\x45\xdf\xa3" + bytes(8)) == "matroska"
    assert container_format(b"RIFF\x00\x00\x00\x00AVI ") == "avi"


def mjpeg_avi(path, frames: int = 10, corrupt: tuple[int, ...] = ()):  # noqa: ANN001, ANN201 - a Path
    """The clip's first ``frames`` frames as an MJPEG AVI (each frame its own JPEG), the JPEG data of the frames in
    ``corrupt`` overwritten with noise: a damaged upload whose other frames are fine."""
    rgb = [f.rgb for f in sample_frames(_clip(), fps=None, max_frames=frames)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (480, 270))
    for frame in rgb:
        writer.write(cv2.resize(frame[:, :, ::-1], (480, 270), interpolation=cv2.INTER_AREA))
    writer.release()
    data = bytearray(path.read_bytes())
    movi = data.index(b"movi")  # the frames' chunks, in order, after the headers (which name "00dc" too)
    chunks = [i for i in range(movi, len(data) - 4) if data[i : i + 4] == b"00dc"][:frames]
    noise = np.random.default_rng(0)
    for k in corrupt:
        at = chunks[k]
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        data[at + 10 : at + 8 + size] = noise.integers(0, 256, size - 2, dtype=np.uint8).tobytes()  # past the SOI
    path.write_bytes(bytes(data))
    return path


def _lying_avi(path, declared: int, real: int, frames: int):  # noqa: ANN001, ANN202 - a Path
    """An MJPEG AVI whose headers (and first frame) say ``declared`` pixels square while the later frames are JPEGs
    of ``real`` pixels square: a way past a pixel limit checked on the declared size."""
    from io import BytesIO

    from PIL import Image

    def jpeg(side: int, colour: tuple[int, int, int]) -> bytes:
        buf = BytesIO()
        Image.new("RGB", (side, side), colour).save(buf, "JPEG", quality=50)
        return buf.getvalue()

    def chunk(fourcc: bytes, data: bytes) -> bytes:
        return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    images = [jpeg(declared, (200, 40, 40))] + [jpeg(real, (90, 120, 150))] * (frames - 1)
    n, w = frames, declared
    avih = struct.pack("<10I", 40000, 0, 0, 0x10, n, 0, 1, 0, w, w) + bytes(16)
    strh = b"vidsMJPG" + struct.pack("<IHHIIIIIIIIhhhh", 0, 0, 0, 0, 1, 25, 0, n, 0, 0xFFFFFFFF, 0, 0, 0, w, w)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, w, 1, 24, b"MJPG", w * w * 3, 0, 0, 0, 0)
    strl = chunk(b"LIST", b"strl" + chunk(b"strh", strh) + chunk(b"strf", strf))
    hdrl = chunk(b"LIST", b"hdrl" + chunk(b"avih", avih) + strl)
    movi, index, offset = b"", b"", 4
    for image in images:
        piece = chunk(b"00dc", image)
        index += b"00dc" + struct.pack("<III", 0x10, offset, len(image))
        movi += piece
        offset += len(piece)
    riff = b"AVI " + hdrl + chunk(b"LIST", b"movi" + movi) + chunk(b"idx1", index)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    return path


def test_frames_larger_than_the_container_says_come_out_at_its_size(tmp_path) -> None:
    video = _lying_avi(tmp_path / "lying.avi", declared=64, real=1600, frames=4)
    info = probe_video(video)
    assert (info.width, info.height, info.frames) == (64, 64, 4)
    frames = list(sample_frames(video, fps=None, max_pixels=64 * 64))
    assert [f.rgb.shape for f in frames] == [(64, 64, 3)] * 4  # scaled by OpenCV, never held at 1600x1600
    assert frames[1].rgb.mean(axis=(0, 1)) == pytest.approx([90, 120, 150], abs=15)  # the big frames' colour,
    assert frames[0].rgb.mean(axis=(0, 1)) == pytest.approx([200, 40, 40], abs=15)  # not the first one's


def test_a_frame_that_cannot_be_decoded_is_skipped_and_the_rest_read(tmp_path) -> None:
    report = DecodeReport()
    video = mjpeg_avi(tmp_path / "damaged.avi", 10, corrupt=(2, 6))
    assert [f.index for f in sample_frames(video, fps=None, report=report)] == [0, 1, 3, 4, 5, 7, 8, 9]
    assert report.skipped == 2 and report.decoded == 8 and report.gave_up_at is None
    assert report.warnings(probe_video(video)) == ["frames that could not be decoded were skipped: 2"]
    clean = DecodeReport()
    assert len(list(sample_frames(mjpeg_avi(tmp_path / "clean.avi", 10), fps=None, report=clean))) == 10
    assert clean == DecodeReport(decoded=10)  # the end of a video is not a skipped frame
    ruined = DecodeReport()
    assert list(sample_frames(mjpeg_avi(tmp_path / "ruined.avi", 10, corrupt=tuple(range(10))), report=ruined)) == []


def test_decoding_stops_at_its_limit_whatever_the_rate_asked() -> None:
    report = DecodeReport()  # one frame every 10 s of a 4.2 s clip would decode all 105 frames for one
    frames = list(sample_frames(_clip(), fps=0.1, max_decoded=30, report=report))
    assert [f.index for f in frames] == [0] and report.decoded == 30 and report.decode_limit == 30
    assert "decoding stopped after 30 frames" in report.warnings(probe_video(_clip()))[0]


# -- fmpn video ---------------------------------------------------------------------------------


@pytest.fixture
def fast_env(monkeypatch):
    monkeypatch.setenv("FMPN_WEIGHTS", str(checkpoint_path()))
    monkeypatch.setenv("FMPN_DETECT_MAX_SIDE", "960")


def test_fmpn_video_prints_frames_tracks_and_writes_the_overlay(fast_env, tmp_path, capsys) -> None:
    clip = _clip()
    overlay = tmp_path / "out" / "clip.mp4"
    assert main(["video", str(clip), "--max-frames", "6", "--overlay", str(overlay), "--batch", "4"]) == 0
    out = capsys.readouterr()
    body = json.loads(out.out)
    assert body["video"] == {"width": 1920, "height": 1080, "fps": 25.0, "frames": 105, "duration_s": 4.2}
    assert body["sampled_fps"] == 5.0 and body["frames_analysed"] == 6 and body["frames_truncated"] is True
    assert body["warnings"] == ["only the first 6 sampled frames were analysed (max_frames=6) of 21"]
    assert [f["frame"] for f in body["frames"]] == [0, 5, 10, 15, 20, 25]
    faces = [face for frame in body["frames"] for face in frame["faces"]]
    assert len(faces) >= 18  # four or more people walk through every one of these frames
    for frame in body["frames"]:
        tracks = [face["track"] for face in frame["faces"]]
        assert len(set(tracks)) == len(tracks)  # no two faces of one frame on one track
        assert all(
            face["mask"] is None and 0 <= face["box"]["x1"] < face["box"]["x2"] <= 1920 for face in frame["faces"]
        )
    # The same people throughout: the tracks that span all six frames hold most faces.
    tracks = {t["id"]: t for t in body["tracks"]}
    assert sum(t["frames"] for t in tracks.values()) == len(faces)
    assert sum(t["frames"] == 6 for t in tracks.values()) >= 3
    assert [t["frames"] for t in body["tracks"]] == sorted((t["frames"] for t in body["tracks"]), reverse=True)
    for track in tracks.values():  # the averaged probabilities are the mean of the track's faces'
        mine = [face["probabilities"] for face in faces if face["track"] == track["id"]]
        for name, value in track["probabilities"].items():
            assert value == pytest.approx(np.mean([p[name] for p in mine]), abs=1e-6)
        assert track["label"] == max(track["probabilities"], key=track["probabilities"].get)
        assert track["start_s"] == track["first_frame"] / 25 and track["end_s"] == track["last_frame"] / 25
    assert "6 frames analysed" in out.err and f"{len(tracks)} tracks" in out.err
    capture = cv2.VideoCapture(str(overlay))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 6 and capture.get(cv2.CAP_PROP_FPS) == 5.0
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (1280, 720)
    capture.release()


def test_fmpn_video_jsonl_streams_the_same_answer(fast_env, capsys) -> None:
    clip = str(_clip())
    assert main(["video", clip, "--max-frames", "3", "--fps", "2", "--indent", "0"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(["video", clip, "--max-frames", "3", "--fps", "2", "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["type"] for line in lines] == ["video", "frame", "frame", "frame", "summary"]
    assert [{k: v for k, v in f.items() if k != "type"} for f in lines[1:-1]] == whole["frames"]
    assert lines[-1]["tracks"] == whole["tracks"] and lines[0]["video"] == whole["video"]


def test_fmpn_video_analyses_a_window_given_in_seconds_or_minutes(fast_env, capsys) -> None:
    clip = str(_clip())
    assert main(["video", clip, "--start", "0:01", "--end", "2", "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (lines[0]["start_s"], lines[0]["end_s"]) == (1.0, 2.0)
    assert [line["frame"] for line in lines[1:-1]] == [25, 30, 35, 40, 45]  # numbered as in the whole video
    assert lines[-1]["warnings"] == [] and all(t["first_frame"] >= 25 for t in lines[-1]["tracks"])
    with pytest.raises(SystemExit):
        main(["video", clip, "--start", "1:75"])
    assert "argument --start: not a time: '1:75' (minutes and seconds below 60" in capsys.readouterr().err


def test_fmpn_video_writes_a_row_a_face_a_frame(fast_env, tmp_path, capsys) -> None:
    import csv

    table = tmp_path / "faces.csv"
    assert main(["video", str(_clip()), "--max-frames", "3", "--csv", str(table), "--indent", "0"]) == 0
    body = json.loads(capsys.readouterr().out)
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    faces = [(frame, face) for frame in body["frames"] for face in frame["faces"]]
    assert len(rows) == len(faces) >= 9
    classes = list(body["frames"][0]["faces"][0]["probabilities"])
    assert list(rows[0]) == ["frame", "time_s", "track", "x1", "y1", "x2", "y2", "score", "label", *classes]
    for row, (frame, face) in zip(rows, faces, strict=True):
        assert (int(row["frame"]), int(row["track"]), row["label"]) == (frame["frame"], face["track"], face["label"])
        assert float(row["x2"]) == pytest.approx(face["box"]["x2"], abs=0.05)
        assert [float(row[c]) for c in classes] == pytest.approx(list(face["probabilities"].values()), abs=1e-6)


def test_fmpn_video_resumes_a_stopped_run_where_it_stopped(fast_env, tmp_path, capsys) -> None:
    import fcntl

    clip = str(_clip())

    def run(out, *extra: str) -> int:
        argv = ["video", clip, "--fps", "3", "--max-frames", "7", "--batch", "2", "--jsonl", "--out", str(out)]
        return main([*argv, *extra, "--csv", str(out.with_suffix(".csv")), "--resume"])

    def lines(path) -> list[dict]:
        items = [json.loads(line) for line in path.read_text().splitlines()]
        items[-1].pop("timings_ms")
        return items

    whole = tmp_path / "whole.jsonl"  # --resume with no file yet: the run starts
    assert run(whole) == 0 and capsys.readouterr().out == ""  # the lines go to the file, not stdout
    want = lines(whole)
    assert [line["type"] for line in want] == ["video"] + ["frame"] * 7 + ["summary"]
    options = want[0]["options"]
    assert {k: options[k] for k in ("max_frames", "max_faces", "detect_every", "mask", "batch")} == {
        "max_frames": 7,
        "max_faces": 20,
        "detect_every": 1,
        "mask": False,
        "batch": 2,
    }
    assert options["video_bytes"] == 2411585 and options["detect_max_side"] == 960
    # A stop in the middle of writing the fourth frame: three whole frames, then a line cut short. The run goes on
    # after the second, the last whole batch of two frames, so that the frames go through the model as before.
    stopped = tmp_path / "stopped.jsonl"
    text = whole.read_bytes().splitlines(keepends=True)
    stopped.write_bytes(b"".join(text[:4]) + text[4][:150])
    stopped.with_suffix(".csv").write_text("frame,time_s\n0,0.0\n")  # a table behind the file: written anew
    assert run(stopped) == 0
    err = capsys.readouterr().err
    assert "5 frames analysed" in err and "after the 2 frames in" in err
    assert lines(stopped) == want  # the same frames, the same tracks, the same summary
    assert stopped.with_suffix(".csv").read_text() == whole.with_suffix(".csv").read_text()
    assert len(want[-1]["tracks"]) >= 5 and sum(t["frames"] for t in want[-1]["tracks"]) >= 25
    # A finished file is left as it is (its table written again); one of another run, or of no run, is refused.
    before = stopped.read_bytes()
    stopped.with_suffix(".csv").unlink()
    assert run(stopped) == 0 and "is finished already (7 frames)" in capsys.readouterr().err
    assert stopped.read_bytes() == before
    assert stopped.with_suffix(".csv").read_text() == whole.with_suffix(".csv").read_text()
    stopped.write_bytes(b"".join(text[:3]))
    assert run(stopped, "--max-faces", "2") == 2
    err = capsys.readouterr().err
    assert "holds another run (options.max_faces: 20 there, 2 here); give the same video, weights and options" in err
    assert stopped.read_bytes() == b"".join(text[:3])  # refused before anything is written
    for junk, message in [
        (b'{"type": "frame"}\n', "is not a file fmpn video --jsonl wrote"),
        (b"my notes, no newline", "is not a file fmpn video --jsonl wrote"),
        (text[0] + text[1] + b'{"type":"frame","frame":"x"}\n', "line 3 is not a frame of this run"),
    ]:
        stopped.write_bytes(junk)
        assert run(stopped) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert stopped.read_bytes() == junk
    # Faces followed between whole-frame detections (--detect-every): the follower is replayed too, so that the
    # frames after the stop are looked for where an uninterrupted run looks for them.
    followed, cut = tmp_path / "followed.jsonl", tmp_path / "followed-cut.jsonl"
    assert run(followed, "--detect-every", "3", "--fps", "5", "--max-frames", "10") == 0
    want = lines(followed)
    assert {line["detection"] for line in want[1:-1]} == {"whole", "near"}
    text = followed.read_bytes().splitlines(keepends=True)
    cut.write_bytes(b"".join(text[:10]))  # nine frames: goes on after the eighth, the next one a "near" frame
    assert json.loads(text[9])["detection"] == "near"
    assert run(cut, "--detect-every", "3", "--fps", "5", "--max-frames", "10") == 0
    assert "after the 8 frames in" in capsys.readouterr().err
    assert lines(cut) == want
    with stopped.open("rb") as held:  # another run writing the file: refused, with --resume or without
        fcntl.flock(held, fcntl.LOCK_EX)
        assert run(stopped) == 2
        assert "another fmpn video is writing" in capsys.readouterr().err
        assert main(["video", clip, "--max-frames", "1", "--out", str(stopped)]) == 2
        assert "another fmpn video is writing" in capsys.readouterr().err
    before = stopped.read_bytes()  # a run that fails before its first frame leaves the file as it was
    assert main(["video", clip, "--out", str(stopped), "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err and stopped.read_bytes() == before
    (tmp_path / "folder.jsonl").mkdir()
    for argv, message in [
        (["video", clip, "--resume"], "--resume goes on with the JSON lines of --jsonl --out FILE"),
        (
            ["video", clip, "--resume", "--jsonl", "--out", str(whole), "--overlay", str(tmp_path / "o.mp4")],
            "--overlay cannot be resumed",
        ),
        (["video", clip, "--jsonl", "--out", str(tmp_path / "folder.jsonl")], "folder.jsonl is a folder"),
        (["video", clip, "--out", str(whole / "x.json")], "cannot make its folder"),
        (["video", clip, "--jsonl", "--out", "/dev/null", "--resume"], "--out /dev/null is not a regular file"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_predict_video_in_python_gives_fmpn_videos_answer(fast_env, capsys) -> None:
    clip = _clip()
    assert main(["video", str(clip), "--max-frames", "4", "--indent", "0"]) == 0
    body = json.loads(capsys.readouterr().out)
    predictor = Predictor(checkpoint_path(), detect_max_side=960)
    video = predictor.predict_video(clip, max_frames=4)
    assert (video.info.width, video.info.height, video.info.fps) == (1920, 1080, 25.0)
    assert [f.index for f in video.frames] == [f["frame"] for f in body["frames"]] == [0, 5, 10, 15]
    for got, frame in zip(video.frames, body["frames"], strict=True):
        assert got.time_s == frame["time_s"] and got.tracks == [face["track"] for face in frame["faces"]]
        assert [f.label for f in got.prediction.faces] == [face["label"] for face in frame["faces"]]
    assert [(t.id, t.frames) for t in video.tracks] == [(t["id"], t["frames"]) for t in body["tracks"]]
    for track, want in zip(video.tracks, body["tracks"], strict=True):
        assert track.probabilities.tolist() == pytest.approx(list(want["probabilities"].values()), abs=1e-6)
    with pytest.raises(VideoDecodeError, match="no such video file"):
        predictor.predict_video(clip.with_name("none.mp4"))


def test_a_video_sent_as_a_photo_is_told_where_to_go(fast_env, capsys) -> None:
    assert main(["predict", str(_clip()), "--no-overlay"]) == 2
    err = capsys.readouterr().err
    assert "not an image" in err and "it is a video: POST it to /v1/videos:predict (fmpn video FILE)" in err


def test_fmpn_video_refuses_bad_input_in_one_line(fast_env, tmp_path, capsys) -> None:
    clip = _clip()
    photo = require_data("photos", "group-multiface.jpg")
    for argv, message in [
        (["video", str(photo)], "not a video file of a supported format (MP4/MOV, WebM/MKV or AVI)"),
        (["video", str(tmp_path / "none.mp4")], "no such video file"),
        (["video", str(clip), "--fps", "0"], "--fps must be above 0"),
        (["video", str(clip), "--max-frames", "0"], "--max-frames must be at least 1"),
        (["video", str(clip), "--detect-every", "0"], "--detect-every must be at least 1"),
        (["video", str(clip), "--start", "4.2"], "start 4.2 s is at or past the end of the video (4.200 s long"),
        (["video", str(clip), "--start", "0:02", "--end", "1"], "end must be after start (2 s) and at most"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err


# -- POST /v1/videos:predict --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    srv = live_server(max_video_bytes=3_000_000, max_video_frames=8, detect_max_side=960)
    yield srv
    srv.stop()


def test_the_service_predicts_a_video_like_its_frames_as_photos(server) -> None:
    clip = _clip()
    with server.client() as client:
        r = client.post(
            "/v1/videos:predict",
            params={"fps": 2.5, "max_frames": 4},
            content=clip.read_bytes(),
            headers={"content-type": "video/mp4"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [f["frame"] for f in body["frames"]] == [0, 10, 20, 30] and body["frames_truncated"] is True
        assert body["sampled_fps"] == 2.5 and body["model"]["name"] == "random-cpu"
        assert body["tracks"] and {"decode", "queue", "detect", "model", "total"} <= set(body["timings_ms"])
        timings = body["timings_ms"]
        assert 0 < timings["detect"] + timings["model"] < timings["total"]  # each frame counts its share of a batch
        # Frame 10 as a lossless PNG through the photo route: the same faces and probabilities.
        frame = next(f for f in sample_frames(clip, fps=2.5) if f.index == 10)
        ok, png = cv2.imencode(".png", frame.rgb[:, :, ::-1])
        photo = client.post("/v1/predictions", params={"mask": "false"}, files={"image": ("f.png", png.tobytes())})
        assert photo.status_code == 200, photo.text
        video_faces = body["frames"][1]["faces"]
        assert len(video_faces) == len(photo.json()["faces"]) >= 4
        for a, b in zip(video_faces, photo.json()["faces"], strict=True):
            assert a["box"] == pytest.approx(b["box"]) and a["label"] == b["label"]
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
        # The cap on frames applies whatever is asked; multipart works too; masks on request.
        r = client.post(
            "/v1/videos:predict", params={"fps": 60, "mask": "true"}, files={"video": ("c.mp4", clip.read_bytes())}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [f["frame"] for f in body["frames"]] == list(range(8)) and body["sampled_fps"] is None
        assert body["warnings"] == ["only the first 8 sampled frames were analysed (max_frames=8) of 105"]
        assert body["frames"][0]["faces"][0]["mask"]["width"] == 64
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "fmpn_videos_total") == 2
        assert metric_value(metrics, "fmpn_video_frames_total") == 12
        # Faces followed between whole-frame detections: the first frame as before, the people followed on.
        params = {"fps": 5, "max_frames": 8}
        every = client.post("/v1/videos:predict", params=params, content=clip.read_bytes()).json()
        followed = client.post(
            "/v1/videos:predict", params={**params, "detect_every": 8}, content=clip.read_bytes()
        ).json()
        assert followed["frames"][0] == every["frames"][0]
        assert [len(f["faces"]) for f in followed["frames"]] != [0] * 8
        assert sum(len(f["faces"]) for f in followed["frames"]) >= 0.7 * sum(len(f["faces"]) for f in every["frames"])
        assert sum(t["frames"] >= 6 for t in followed["tracks"]) >= 3  # the same people, followed
        # Each frame looked for whole or near as fmpn video looks for it (a face lost near: the whole frame after all,
        # and the next whole-frame detection N frames after that one).
        assert {f["detection"] for f in every["frames"]} == {"whole"}
        predictor = Predictor(checkpoint_path(), detect_max_side=960)
        for n, start in ((8, 0.0), (3, 1.0)):
            asked = {**params, "detect_every": n, "start": start}
            served = client.post("/v1/videos:predict", params=asked, content=clip.read_bytes())
            frames = sample_frames(clip, fps=5, max_frames=8, window=Window(start))
            local = [p for _, p in predict_frames(predictor, frames, detect_every=n)]
            assert [f["detection"] for f in served.json()["frames"]] == [
                "whole" if p.whole_frame else "near" for p in local
            ]
            assert [len(f["faces"]) for f in served.json()["frames"]] == [len(p.faces) for p in local]


def test_the_service_analyses_a_window_of_a_video(server) -> None:
    clip = _clip().read_bytes()
    with server.client() as client:
        r = client.post("/v1/videos:predict", params={"fps": 5, "start": 2, "end": 3}, content=clip)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [f["frame"] for f in body["frames"]] == [50, 55, 60, 65, 70]
        assert (body["start_s"], body["end_s"], body["frames_truncated"], body["warnings"]) == (2, 3, False, [])
        assert body["tracks"] and all(t["first_frame"] >= 50 and t["last_frame"] <= 70 for t in body["tracks"])
        past = client.post("/v1/videos:predict", params={"start": 4.2}, content=clip)
        assert past.status_code == 400 and error_of(past)["code"] == "start_past_end"
        assert error_of(past)["message"].startswith("start 4.2 s is at or past the end of the video (4.200 s long")
        backwards = client.post("/v1/videos:predict", params={"start": 2, "end": 1.5}, content=clip)
        assert backwards.status_code == 422 and error_of(backwards)["code"] == "invalid_request"
        assert error_of(backwards)["message"] == "end must be after start (2 s) and at most 1000000000, got 1.5"
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "fmpn_rejected_total", reason="start_past_end") == 1


def test_the_service_streams_json_lines_while_it_analyses(server) -> None:
    clip = _clip().read_bytes()
    params = {"fps": 5, "max_frames": 5}
    with server.client() as client:
        whole = client.post("/v1/videos:predict", params=params, content=clip).json()
        headers = {"accept": "application/x-ndjson", "content-type": "video/mp4"}
        with client.stream("POST", "/v1/videos:predict", params=params, content=clip, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        bad = client.post("/v1/videos:predict", content=b"not a video", headers=headers)
    assert [line["type"] for line in lines] == ["video"] + ["frame"] * 5 + ["summary"]
    head, frames, summary = lines[0], lines[1:-1], lines[-1]
    assert {k: head[k] for k in ("video", "model", "sampled_fps")} == {
        k: whole[k] for k in ("video", "model", "sampled_fps")
    }
    assert [{k: v for k, v in f.items() if k != "type"} for f in frames] == whole["frames"]
    assert summary["tracks"] == whole["tracks"] and summary["frames_truncated"] is True
    assert summary["warnings"] == whole["warnings"] and summary["frames_analysed"] == 5
    # A video that cannot be read is an error status before any line, as without streaming.
    assert bad.status_code == 415 and error_of(bad)["code"] == "unsupported_video"


def test_the_service_refuses_bad_videos_with_the_reason_and_goes_on(server) -> None:
    clip = _clip().read_bytes()
    photo = require_data("photos", "group-multiface.jpg").read_bytes()
    playlist = b"#EXTM3U\n#EXTINF:1,\nhttp://169.254.169.254/latest/meta-data/\n#EXT-X-ENDLIST\n"
    cases = [
        (photo, "video/mp4", {}, 415, "unsupported_video", "MP4/MOV, WebM/MKV or AVI"),
        (playlist, "application/octet-stream", {}, 415, "unsupported_video", "MP4/MOV"),
        (clip[: len(clip) // 2], "video/mp4", {}, 400, "invalid_video", "cannot be decoded"),
        (b"", "video/mp4", {}, 400, "empty_body", "send a video file"),
        (clip + bytes(700_000), "video/mp4", {}, 413, "payload_too_large", "limit of 3000000 bytes (max_video_bytes)"),
        (b"{}", "application/json", {}, 415, "unsupported_media_type", "multipart/form-data"),
        (clip, "video/mp4", {"fps": "0"}, 422, None, "fps"),
        (clip, "video/mp4", {"detect_every": "0"}, 422, None, "detect_every"),
    ]
    with server.client() as client:
        for content, ctype, params, status, code, text in cases:
            r = client.post("/v1/videos:predict", params=params, content=content, headers={"content-type": ctype})
            assert r.status_code == status, (code, r.text)
            error = error_of(r)
            assert (code is None or error["code"] == code) and text in error["message"], error
        assert client.post("/v1/videos:predict", params={"max_frames": 1}, content=clip).status_code == 200


def test_the_service_skips_a_damaged_frame_and_refuses_a_video_with_none(server, tmp_path, monkeypatch) -> None:
    damaged = mjpeg_avi(tmp_path / "damaged.avi", 8, corrupt=(3,)).read_bytes()
    ruined = mjpeg_avi(tmp_path / "ruined.avi", 8, corrupt=tuple(range(8))).read_bytes()
    headers = {"content-type": "video/x-msvideo"}
    with server.client() as client:
        r = client.post("/v1/videos:predict", params={"fps": 60}, content=damaged, headers=headers)
        assert r.status_code == 200, r.text
        assert [f["frame"] for f in r.json()["frames"]] == [0, 1, 2, 4, 5, 6, 7]
        assert r.json()["warnings"] == ["frames that could not be decoded were skipped: 1"]
        r = client.post("/v1/videos:predict", content=ruined, headers=headers)
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_video", r.text
        assert "no frame that could be decoded" in error_of(r)["message"]
        # the frames decoded are bounded too: here 1 a frame analysed (the service allows 60), 8 in all
        monkeypatch.setattr("app.service.DECODED_PER_ANALYSED", 1)
        r = client.post("/v1/videos:predict", params={"fps": 0.1}, content=_clip().read_bytes())
        assert r.status_code == 200, r.text
        assert r.json()["frames_truncated"] is True and r.json()["frames_analysed"] == 1
        assert "decoding stopped after 8 frames" in r.json()["warnings"][0]


def test_videos_can_be_turned_off() -> None:
    clip = _clip().read_bytes()
    server = live_server(videos=False, warmup=False)
    try:
        with server.client() as client:
            r = client.post("/v1/videos:predict", content=clip, headers={"content-type": "video/mp4"})
    finally:
        server.stop()
    assert r.status_code == 403 and error_of(r)["code"] == "videos_disabled"
    assert "FMPN_VIDEOS=false" in error_of(r)["message"]


def test_the_service_reads_up_to_a_window_within_its_decoding_limit() -> None:
    """The service does not seek (a seek decodes from the keyframe before the start, uncounted): the frames before
    a window's start count against the frames it decodes per request (60 per analysable frame), and a start past
    them is a 413 naming the limit and the way out."""
    clip = _clip().read_bytes()
    server = live_server(max_video_frames=1, warmup=False, detect_max_side=640)  # 60 frames decoded at most
    try:
        with server.client() as client:
            near = client.post("/v1/videos:predict", params={"start": 2.0}, content=clip)  # frame 50
            far = client.post("/v1/videos:predict", params={"start": 3.0}, content=clip)  # frame 75
            assert client.get("/healthz").status_code == 200
    finally:
        server.stop()
    assert near.status_code == 200, near.text
    assert [f["frame"] for f in near.json()["frames"]] == [50] and near.json()["start_s"] == 2.0
    assert far.status_code == 413 and error_of(far)["code"] == "decode_limit"
    assert error_of(far)["message"] == (
        "start 3 s lies past the 60 frames the service decodes per request; analyse long videos with fmpn video --start"
    )
