"""Video benchmark (not a test): ``fmpn video``'s pipeline on the real multi-face clip, frames a second of compute.

Runs the clip (1920x1080, 25 fps, 105 frames, 4-7 faces a frame) through ``fmpn.video.predict_frames`` with
the released weights, the frames sampled at each ``--fps``, in batches of 1 (a frame at a time, as a loop over
frames calling a photo API would) and of ``--batch`` frames, alternating round by round, so the ratio holds on a
noisy shared machine. Prints frames/s, faces/s, the share of time in detection and in the model, and the ratio.

    python bench/bench_video.py --threads 2
    python bench/bench_video.py --threads 2 --fps 5,25 --rounds 3 --compile on
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.service import build_predictor  # noqa: E402
from app.settings import Settings  # noqa: E402
from fmpn.video import FaceTracker, predict_frames, sample_frames  # noqa: E402

DATA = Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data"))


def run(predictor, clip: Path, fps: float | None, batch: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    tracker = FaceTracker()
    t0 = time.perf_counter()
    frames = faces = 0
    for frame, prediction in predict_frames(predictor, sample_frames(clip, fps), batch, timings=timings):
        tracker.update(
            frame.index, frame.time_s, [f.box for f in prediction.faces], [f.probabilities for f in prediction.faces]
        )
        frames += 1
        faces += len(prediction.faces)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "frames": frames,
        "faces": faces,
        "tracks": len(tracker.tracks),
        "detect": timings.get("detect", 0.0),
        "model": timings.get("model", 0.0),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DATA / "photos" / "clip-multiface.mp4")
    p.add_argument("--weights", default=str(ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"))
    p.add_argument("--fps", default="5,25", help="comma-separated sampling rates (25: every frame of the clip)")
    p.add_argument("--batch", type=int, default=8, help="frames a batch, against 1")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off")
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
        f"{args.threads} threads, clip {args.clip.name}"
    )
    for fps in [float(f) for f in args.fps.split(",")]:
        results: dict[int, list[dict[str, float]]] = {1: [], args.batch: []}
        for _ in range(args.rounds):
            for batch in results:
                results[batch].append(run(predictor, args.clip, fps, batch))
        for batch, runs in results.items():
            r = runs[0]
            rate = [x["frames"] / x["seconds"] for x in runs]
            total = sum(x["seconds"] for x in runs)
            print(
                f"fps {fps:g} batch {batch:2d}: {r['frames']} frames, {r['faces']} faces, {r['tracks']} tracks; "
                f"{statistics.median(rate):.2f} frames/s (runs {', '.join(f'{v:.2f}' for v in rate)}), "
                f"{statistics.median(x['faces'] / x['seconds'] for x in runs):.1f} faces/s; "
                f"detect {sum(x['detect'] for x in runs) / total:.0%}, "
                f"model {sum(x['model'] for x in runs) / total:.0%}"
            )
        one, many = (statistics.median(x["seconds"] for x in results[b]) for b in results)
        print(f"fps {fps:g}: batch {args.batch} takes {many / one:.2f}x the time of frame by frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
