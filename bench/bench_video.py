"""Video benchmark (not a test): ``fmpn video``'s pipeline on the real multi-face clip, frames a second of compute.

Runs the clip (1920x1080, 25 fps, 105 frames, 4-7 faces a frame) through ``fmpn.video.predict_frames`` with
the released weights, the frames sampled at each ``--fps``, in batches of 1 (a frame at a time, as a loop over
frames calling a photo API would) and of ``--batch`` frames, and with the faces followed between whole-frame
detections every N sampled frames (each ``--detect-every`` above 1), alternating round by round, so the ratios hold
on a noisy shared machine. Prints frames/s, faces/s, the share of time in detection and in the model, the ratios,
and how far following changes the answer: the faces of the every-frame run it misses, and of those it finds, how
many get another label. ``--steady`` adds a clip made here from a portrait photo (one face, the camera panning
slowly, 1920x1080, 4 s at 25 fps), the case of an interview or a webcam recording.

    python bench/bench_video.py --threads 2
    python bench/bench_video.py --threads 2 --fps 5,25 --rounds 3 --compile on --detect-every 5,10 --steady
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.service import build_predictor  # noqa: E402
from app.settings import Settings  # noqa: E402
from fmpn.video import FaceTracker, predict_frames, sample_frames  # noqa: E402

DATA = Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data"))


def run(predictor, clip: Path, fps: float | None, batch: int, detect_every: int) -> dict:
    timings: dict[str, float] = {}
    tracker = FaceTracker()
    t0 = time.perf_counter()
    frames = faces = 0
    found = []  # each frame's (box, label index)
    for frame, prediction in predict_frames(
        predictor, sample_frames(clip, fps), batch, timings=timings, detect_every=detect_every
    ):
        tracker.update(
            frame.index, frame.time_s, [f.box for f in prediction.faces], [f.probabilities for f in prediction.faces]
        )
        frames += 1
        faces += len(prediction.faces)
        found.append([(f.box, f.label_index) for f in prediction.faces])
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "frames": frames,
        "faces": faces,
        "tracks": len(tracker.tracks),
        "detect": timings.get("detect", 0.0),
        "model": timings.get("model", 0.0),
        "found": found,
    }


def agreement(reference: list, other: list) -> tuple[int, int, int]:
    """Of the reference run's faces: (missed by the other run, found with the same label, found with another)."""
    missed = same = changed = 0
    for ref_faces, faces in zip(reference, other, strict=True):
        for box, label in ref_faces:
            overlaps = box_iou(torch.tensor([box]), torch.tensor([f[0] for f in faces]).view(-1, 4))[0]
            best = int(overlaps.argmax()) if len(faces) else -1
            if best < 0 or overlaps[best] < 0.5:
                missed += 1
            elif faces[best][1] == label:
                same += 1
            else:
                changed += 1
    return missed, same, changed


def steady_clip(photo: Path, out: Path, seconds: float = 4.0, fps: float = 25.0) -> Path:
    """A 1920x1080 clip of ``photo`` (fitted to the frame's height) panning slowly sideways: one steady face."""
    import cv2

    image = cv2.imread(str(photo))
    h, w = image.shape[:2]
    scale = 1080 / h
    image = cv2.resize(image, (round(w * scale), 1080), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1920, 1080))
    n = round(seconds * fps)
    for i in range(n):
        frame = np.zeros((1080, 1920, 3), np.uint8)
        x = round(200 + 400 * i / n)  # 400 px across the clip
        part = image[:, : min(image.shape[1], 1920 - x)]
        frame[:, x : x + part.shape[1]] = part
        writer.write(frame)
    writer.release()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DATA / "photos" / "clip-multiface.mp4")
    p.add_argument("--weights", default=str(ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"))
    p.add_argument("--fps", default="5,25", help="comma-separated sampling rates (25: every frame of the clip)")
    p.add_argument("--batch", type=int, default=8, help="frames a batch, against 1")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off")
    p.add_argument("--detect-every", default="5", help="comma-separated N: whole-frame detection every N frames")
    p.add_argument("--steady", action="store_true", help="also a one-face clip made from a portrait photo")
    args = p.parse_args()
    if not args.clip.is_file():
        print(f"bench_video: no clip at {args.clip} (the shared data's photos/clip-multiface.mp4)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    predictor = build_predictor(Settings(weights=args.weights, compile=args.compile))
    predictor.warmup()
    info = predictor.info()
    print(
        f"weights {info['weights_file']} ({info['profile']}), {info['dtype']}, compiled {info['compiled']}, "
        f"{args.threads} threads"
    )
    clips = [args.clip]
    with tempfile.TemporaryDirectory() as tmp:
        if args.steady:
            clips.append(steady_clip(DATA / "photos" / "portrait-kate_siegel.jpg", Path(tmp) / "steady-portrait.mp4"))
        for clip in clips:
            for fps in [float(f) for f in args.fps.split(",")]:
                bench_clip(
                    predictor, clip, fps, args.batch, [int(n) for n in args.detect_every.split(",")], args.rounds
                )
    return 0


def bench_clip(predictor, clip: Path, fps: float, batch: int, every: list[int], rounds: int) -> None:  # noqa: ANN001
    configs = [(1, 1), (batch, 1)] + [(batch, n) for n in every if n > 1]
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            results[config].append(run(predictor, clip, fps, *config))
    seconds = {c: statistics.median(x["seconds"] for x in runs) for c, runs in results.items()}
    for (b, n), runs in results.items():
        r = runs[0]
        rate = [x["frames"] / x["seconds"] for x in runs]
        total = sum(x["seconds"] for x in runs)
        line = (
            f"{clip.name} fps {fps:g} batch {b:2d} detect every {n:2d}: {r['frames']} frames, {r['faces']} faces, "
            f"{r['tracks']} tracks; {statistics.median(rate):.2f} frames/s "
            f"(runs {', '.join(f'{v:.2f}' for v in rate)}), "
            f"{statistics.median(x['faces'] / x['seconds'] for x in runs):.1f} faces/s; "
            f"detect {sum(x['detect'] for x in runs) / total:.0%}, model {sum(x['model'] for x in runs) / total:.0%}"
        )
        if n > 1:
            missed, same, changed = agreement(results[(batch, 1)][0]["found"], r["found"])
            line += (
                f"; {seconds[(b, n)] / seconds[(batch, 1)]:.2f}x the time of every frame detected; of its "
                f"{missed + same + changed} faces {missed} missed, {changed} with another label"
            )
        print(line)
    print(
        f"{clip.name} fps {fps:g}: batch {batch} takes {seconds[(batch, 1)] / seconds[(1, 1)]:.2f}x "
        "the time of frame by frame"
    )


if __name__ == "__main__":
    sys.exit(main())
