"""``fmpn video CLIP``: the expressions of the faces in a video, frame by frame and per face followed through it."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cli.serve import _settings
from cli.table import FaceTable

if TYPE_CHECKING:  # fmpn.video imports OpenCV: `fmpn --help` stays fast
    from app.schemas import VideoFrameResult
    from fmpn.video import Resume


def register(sub: argparse._SubParsersAction) -> None:
    video = sub.add_parser(
        "video",
        help="predict the expressions in a video: every sampled frame's faces, and each face's track",
        description="Samples the video's frames at --fps, runs each through the service's pipeline and follows "
        "every face from frame to frame. Prints the POST /v1/videos:predict JSON: the frames' faces (each with "
        "its track id) and one summary per track (the face's probabilities averaged over its frames).",
    )
    video.add_argument("video", metavar="VIDEO", help="an MP4/MOV, WebM/MKV or AVI file")
    video.add_argument("--fps", type=float, help="frames analysed a second of video (default: FMPN_VIDEO_FPS, 5)")
    video.add_argument("--all-frames", action="store_true", help="analyse every frame (overrides --fps)")
    video.add_argument("--max-frames", type=int, help="analyse at most this many frames (default: all)")
    video.add_argument(
        "--start",
        type=video_time,
        default=0.0,
        metavar="TIME",
        help="analyse from this time on: seconds (90.5) or [HH:]MM:SS[.ms] (1:30.5); frames keep their number in the "
        "whole video, so a long video can be analysed in pieces (default 0)",
    )
    video.add_argument(
        "--end", type=video_time, metavar="TIME", help="... up to this time, excluded (default: the video's end)"
    )
    video.add_argument("--batch", type=int, default=8, help="frames per model batch (default 8)")
    video.add_argument(
        "--detect-every",
        type=int,
        help="detect faces in the whole frame every N sampled frames, and in between only near the faces of the "
        "frame before: faster, but a face that enters is found at the next whole-frame detection "
        "(default: FMPN_VIDEO_DETECT_EVERY, 1: every frame)",
    )
    video.add_argument("--max-faces", type=int, help="classify at most the N largest faces a frame")
    video.add_argument("--weights", help="checkpoint (default: FMPN_WEIGHTS or the checkout's released file)")
    video.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    video.add_argument("--mask", action="store_true", help="include each face's motion mask (base64 PNG) in the JSON")
    video.add_argument(
        "--overlay", metavar="OUT.mp4", help="write the analysed frames with boxes, track ids and masks as an MP4"
    )
    video.add_argument(
        "--csv",
        metavar="OUT.csv",
        help="also write one row a face a frame: frame, time, track, box, score, label and every class's probability",
    )
    video.add_argument("--overlay-max-side", type=int, default=1280, help="overlay frame size cap (default 1280)")
    video.add_argument(
        "--jsonl",
        action="store_true",
        help="print JSON lines as the frames are analysed (the service's application/x-ndjson stream) instead of "
        "one JSON document at the end",
    )
    video.add_argument("--indent", type=int, default=2, help="JSON indent (0: one line; not with --jsonl)")
    video.add_argument(
        "--out",
        metavar="OUT.json[l]",
        help="write the JSON (with --jsonl: the JSON lines, each as its frame is done) to this file instead of stdout",
    )
    video.add_argument(
        "--resume",
        action="store_true",
        help="with --jsonl --out: go on with the file an earlier run of the same command left when it was stopped, "
        "after its last whole batch of frames (the faces keep their tracks), ending as an uninterrupted run's; with "
        "no file yet, start it; a finished file is left as it is",
    )
    video.set_defaults(func=run_video)


def video_time(text: str) -> float:
    """Seconds from ``90.5`` or ``[HH:]MM:SS[.ms]`` (as FFmpeg's -ss takes them)."""
    parts = text.strip().split(":")
    try:
        if len(parts) > 3 or any(not p.strip() for p in parts):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (seconds such as 90.5, or [HH:]MM:SS such as 1:30)"
        ) from None
    if any(not math.isfinite(v) or v < 0 for v in values) or any(v >= 60 for v in values[1:]):
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (minutes and seconds below 60, nothing negative)")
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


def run_video(args: argparse.Namespace) -> int:
    from pydantic_core import to_jsonable_python
    from tqdm import tqdm

    from app.render import render_overlay
    from app.service import build_predictor
    from app.video import VideoAnalysis, json_line
    from fmpn.video import FaceFollower, Window, frames_to_sample, predict_frames, probe_video, sample_frames

    settings = _settings(args, compile="off")
    fps = None if args.all_frames else (settings.video_fps if args.fps is None else args.fps)
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be above 0, got {args.fps}")
    for name in ("max_frames", "batch", "max_faces", "overlay_max_side", "detect_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    detect_every = settings.video_detect_every if args.detect_every is None else args.detect_every
    window = Window(args.start, args.end)
    if args.resume and not (args.jsonl and args.out):
        raise ValueError("--resume goes on with the JSON lines of --jsonl --out FILE: name them")
    if args.resume and args.overlay:
        raise ValueError("--overlay cannot be resumed (an MP4 cut off by a stop is unreadable); leave it out")
    path = Path(args.video)
    info = probe_video(path)  # a clear error before the model loads
    window.check(info)
    out_path = _writable(args.out) if args.out else None
    out = _open_output(out_path)
    earlier = EarlierRun.read(out_path, args.batch) if args.resume else EarlierRun()
    predictor = build_predictor(settings)
    model = predictor.info()
    analysis = VideoAnalysis(info, model, fps, args.max_frames, args.mask, keep_frames=not args.jsonl, window=window)
    # What the answer depends on beyond the head's fields: a resumed run must have been asked the same.
    options = {
        "max_frames": args.max_frames,
        "max_faces": settings.max_faces if args.max_faces is None else args.max_faces,
        "detect_every": detect_every,
        "mask": args.mask,
        "batch": args.batch,  # the frames that go through the model together: the last bits of its numbers
        "model_batch": settings.model_batch,  # ... and the faces of a forward pass
        "video_bytes": path.stat().st_size,
        "video_head_sha256": _head_sha256(path),
        **{k: model[k] for k in ("weights_sha256", "device", "dtype", "flip_average")},
        **{k: getattr(settings, k) for k in ("detect_max_side", "min_face_size", "min_face_score", "retry_pad")},
    }
    head = {**to_jsonable_python(analysis.head()), "options": options}
    if earlier.head is not None:
        earlier.check(head)
        if args.max_frames is not None and earlier.frames > args.max_frames:
            raise ValueError(f"{args.out} holds {earlier.frames} frames, more than --max-frames {args.max_frames}")
    table = FrameTable(args.csv, predictor.classes) if args.csv else None
    follower = FaceFollower(detect_every)
    for result in earlier.replay():  # the tracks, where faces were looked for, and the table, as the file left them
        analysis.replay(result)
        follower.seen([(f.box.x1, f.box.y1, f.box.x2, f.box.y2) for f in result.faces], result.detection == "whole")
        if table is not None:
            table.add(result)
    if earlier.finished:
        out.close()
        if table is not None:
            table.close()
        print(f"fmpn video: {args.out} is finished already ({earlier.frames} frames)", file=sys.stderr)
        return 0
    if out_path is not None:  # a line cut short by a stop, and the frames of a batch not finished, go
        out.truncate(earlier.size)
        out.seek(earlier.size)
    if args.jsonl and earlier.head is None:
        out.write(json_line("video", head))
    writer = None
    overlay_fps = analysis.head()["sampled_fps"] or info.fps or 25.0  # the analysed frames' rate
    timings = analysis.timings
    t0 = time.perf_counter()
    left = None if args.max_frames is None else args.max_frames - earlier.frames
    frames = (
        iter(())
        if left == 0
        else sample_frames(
            path, fps, left, settings.max_pixels, report=analysis.report, window=window, resume=earlier.last
        )
    )
    expected = frames_to_sample(info, fps, window)
    total = min(filter(None, (expected, args.max_frames)), default=None)
    # A progress bar on a terminal only (tqdm's disable=None), on stderr: stdout carries the JSON.
    progress = tqdm(
        total=total,
        initial=earlier.frames,
        unit="frame",
        desc=path.name,
        disable=None,
        file=sys.stderr,
        leave=False,
    )
    try:
        for frame, prediction in predict_frames(
            predictor, frames, args.batch, args.max_faces, timings, detect_every, follower
        ):
            result = analysis.add(frame, prediction)
            progress.update()
            if table is not None:
                table.add(result)
            if args.jsonl:
                out.write(json_line("frame", result))
                out.flush()
            ids = [face.track for face in result.faces]
            if args.overlay:
                shown = render_overlay(
                    frame.rgb,
                    prediction,
                    predictor.classes,
                    alpha=settings.mask_alpha,
                    ids=ids,
                    max_side=args.overlay_max_side,
                )
                writer = writer or _writer(args.overlay, shown.shape, overlay_fps)
                writer.write(shown[:, :, ::-1].copy())
    finally:
        progress.close()
        if writer is not None:
            writer.release()
        if table is not None:
            table.close()
    seconds = time.perf_counter() - t0
    faces = int(timings.pop("faces", 0))
    if args.jsonl:
        summary = analysis.summary()
        out.write(json_line("summary", summary))
        tracks = len(summary["tracks"])
    else:
        response = analysis.response()
        out.write((response.model_dump_json(indent=args.indent or None) + "\n").encode())
        tracks = len(response.tracks)
    out.flush()
    if out is not sys.stdout.buffer:
        out.close()
    n = analysis.analysed - earlier.frames
    print(
        f"fmpn video: {path}: {n} frames analysed in {seconds:.1f} s ({n / max(seconds, 1e-9):.2f} frames/s), "
        f"{faces} faces, {tracks} tracks"
        + (f", after the {earlier.frames} frames in {args.out}" if earlier.frames else "")
        + (f", overlay {args.overlay}" if args.overlay and writer is not None else "")
        + (f", table {args.csv}" if args.csv else ""),
        file=sys.stderr,
    )
    return 0


def _writable(path: str) -> Path:
    """The --out file, checked before the model loads: a file (or none yet) in a folder that can be made."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--out {path} is a folder: name a file in it")
    if target.exists() and not target.is_file():
        raise ValueError(f"--out {path} is not a regular file (a device or a pipe): name a file, or leave --out out")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot make its folder ({exc.strerror})") from None
    return target


def _open_output(path: Path | None) -> BinaryIO:
    """Where the answer goes: stdout, or the --out file, opened as it is (cut to what is kept once the model has
    loaded: an error before leaves it whole) and locked while the run lasts: two runs writing one file would
    interleave their lines."""
    import fcntl
    import os

    if path is None:
        return sys.stdout.buffer
    try:
        out = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot write it ({exc.strerror})") from None
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        out.close()
        raise ValueError(f"another fmpn video is writing {path}: wait for it to end") from None
    except OSError:
        pass  # a file system without locks (some network mounts): go on unlocked
    return out


def _head_sha256(path: Path, size: int = 1 << 20) -> str:
    """The SHA-256 of a video's first MiB: another file of the same size and format is told apart."""
    import hashlib

    with path.open("rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


_HEAD_START = b'{"type":"video",'  # how the file's first line starts (json_line writes it without spaces)


@dataclass
class EarlierRun:
    """What an earlier ``--jsonl --out`` run left in its file, read a line at a time (a long video's file is not
    held in memory): its head, whether it finished, and the frames to go on after. A stopped run is cut back to its
    last whole batch of ``batch`` frames, so that the frames go through the model in the same batches as in an
    uninterrupted run (their last bits depend on it); a last line cut short by the stop goes too."""

    path: Path | None = None
    head: dict[str, Any] | None = None
    frames: int = 0  # the frame lines kept
    size: int = 0  # the bytes of the lines kept
    last: Resume | None = None  # where the sampling goes on
    finished: bool = False

    @classmethod
    def read(cls, path: Path, batch: int) -> EarlierRun:
        from fmpn.video import Resume

        run = cls(path)
        if not path.is_file():
            return run  # nothing yet: the run starts
        try:
            with path.open("rb") as f:
                first = f.readline()
                whole = first.endswith(b"\n")
                if not (first.startswith(_HEAD_START) or (not whole and _HEAD_START.startswith(first))):
                    raise ValueError(f"{path} is not a file fmpn video --jsonl wrote: not one to go on with")
                if not whole:
                    return run  # stopped while writing the head: the run starts
                run.head = _line(first, path, 1, "video")[1]
                run.size = offset = len(first)
                frames, last = 0, None
                for n, line in enumerate(f, 2):
                    if not line.endswith(b"\n"):
                        break
                    if run.finished:
                        raise ValueError(f"{path}: line {n} follows the summary: not a file to go on with")
                    kind, fields = _line(line, path, n, "frame", "summary")
                    frames, offset = frames + (kind == "frame"), offset + len(line)
                    if kind == "summary":
                        run.finished, run.frames, run.size = True, frames, offset
                        continue
                    at_time = last.at_time + 1 if last is not None and fields.get("time_s") == last.time_s else 1
                    last = Resume(frame=fields.get("frame"), time_s=fields.get("time_s"), at_time=at_time)
                    if frames % batch == 0:  # a whole batch: where a stopped run goes on
                        run.frames, run.size, run.last = frames, offset, last
        except OSError as exc:
            raise ValueError(f"--out {path}: cannot read it ({exc.strerror})") from None
        return run

    def replay(self) -> Iterator[VideoFrameResult]:
        """The frames kept, one at a time."""
        from app.schemas import VideoFrameResult

        if self.head is None:
            return
        with self.path.open("rb") as f:
            f.readline()
            for n in range(2, self.frames + 2):
                fields = _line(f.readline(), self.path, n, "frame")[1]
                try:
                    result = VideoFrameResult.model_validate(fields)
                except ValueError as exc:  # pydantic's ValidationError is one
                    message = f"{self.path}: line {n} is not a frame of this run ({exc})"
                    raise ValueError(message.replace("\n", " ")) from None
                yield result

    def check(self, head: dict[str, Any]) -> None:
        """The earlier run must have analysed the same video the same way: its head, options included, is this one's."""
        for key, value in head.items():
            mine = self.head.get(key)
            if mine == value:
                continue
            if isinstance(value, dict) and isinstance(mine, dict):  # name the option that differs
                key = min(f"{key}.{k}" for k in value.keys() | mine.keys() if mine.get(k) != value.get(k))
                mine, value = mine.get(key.split(".", 1)[1]), value.get(key.split(".", 1)[1])
            raise ValueError(
                f"{self.path} holds another run ({key}: {json.dumps(mine)} there, {json.dumps(value)} here); "
                "give the same video, weights and options, or another --out"
            )


def _line(line: bytes, path: Path, n: int, *kinds: str) -> tuple[str, dict[str, Any]]:
    """A line's type, one of ``kinds``, and its fields."""
    try:
        item = json.loads(line)
    except ValueError:
        item = None
    if not isinstance(item, dict) or item.get("type") not in kinds:
        raise ValueError(f"{path}: line {n} is not what fmpn video --jsonl writes there: not a file to go on with")
    return item["type"], {k: v for k, v in item.items() if k != "type"}


def _writer(path: str, shape: tuple[int, ...], fps: float):  # noqa: ANN202 - cv2.VideoWriter
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write the overlay video {path} (an .mp4 path in a writable folder)")
    return writer


class FrameTable(FaceTable):
    """A row a face a frame: the frame, its time, the face's track, its cells."""

    def __init__(self, path: str, classes: list[str]) -> None:
        super().__init__(path, ["frame", "time_s", "track"], classes)

    def add(self, frame) -> None:  # noqa: ANN001 - app.schemas.VideoFrameResult
        for face in frame.faces:
            self.write([frame.frame, frame.time_s, face.track, *self.face(face)])
        self.flush()
