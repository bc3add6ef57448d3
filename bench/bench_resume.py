"""Resume benchmark (not a test): how soon ``fmpn video --resume`` is back at work on a long video.

Makes a long 1080p video from the real multi-face clip (``--repeat`` copies end to end, mp4v, in a temporary
folder), then times ``sample_frames`` from the start of the call to the first frame after ``--after`` seconds: resumed
(the last frame sought, as ``--resume`` does) against the same sampling read from the video's first frame (a decoding
budget set, which turns seeking off, as the service does), alternating for ``--rounds``.

    python bench/bench_resume.py
    python bench/bench_resume.py --repeat 60 --after 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmpn.video import Resume, probe_video, sample_frames  # noqa: E402

DATA = Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data"))


def long_video(clip: Path, repeat: int, out: Path) -> None:
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    for _ in range(repeat):
        for frame in frames:
            writer.write(frame)
    writer.release()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30, help="copies of the 4.2 s clip (default 30: 126 s)")
    p.add_argument("--after", type=float, default=100.0, help="the earlier run's last frame, seconds (default 100)")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    clip = DATA / "photos" / "clip-multiface.mp4"
    if not clip.is_file():
        sys.exit(f"no clip at {clip} (set FMPN_DATA to the shared data folder)")
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.mp4"
        t = time.perf_counter()
        long_video(clip, args.repeat, video)
        info = probe_video(video)
        print(
            f"{video.name}: {info.width}x{info.height}, {info.frames} frames, {info.duration_s:.1f} s "
            f"(written in {time.perf_counter() - t:.1f} s)"
        )
        frame = round(args.after * info.fps)
        resume = Resume(frame=frame, time_s=round(frame / info.fps, 4))
        for r in range(args.rounds):
            for name, budget in (("resumed (sought)", None), ("read from the first frame", 10**9)):
                t = time.perf_counter()
                first = next(sample_frames(video, fps=args.fps, max_decoded=budget, resume=resume))
                print(
                    f"round {r + 1}: {name}: frame {first.index} at {first.time_s:.2f} s after "
                    f"{time.perf_counter() - t:.2f} s"
                )


if __name__ == "__main__":
    main()
