"""Detector benchmark (not a test): our MTCNN cascade (fmpn.detect) beside facenet-pytorch's MTCNN.detect.

Both run in one process, alternating call by call on the same images, so the ratio holds on a noisy shared
machine. Cases: FER2013 validation faces (48 px, bare and with the service's 10 % detection-retry margin), CK+
neutral/peak crops (128 px), and the photos at the service bench's 640x480 and at their own sizes.
``--compare`` first checks that both find the same faces on every FER2013 validation image and CK+ crop.

    python bench/bench_detect.py --threads 2
    python bench/bench_detect.py --threads 2 --compare
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmpn.detect import FaceDetector  # noqa: E402
from fmpn.images import pad_edges, read_image  # noqa: E402

DATA = Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data"))


def rgb(path, size: tuple[int, int] | None = None, pad: float = 0.0) -> np.ndarray:
    im = read_image(path)
    if size is not None:
        im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
    return pad_edges(im, pad)[0] if pad else im


def same_faces(ours, boxes, probs, points) -> tuple[bool, float]:
    """(same count, largest coordinate difference in px) between our faces and facenet-pytorch's answer."""
    if boxes is None:
        return not ours, 0.0
    if len(ours) != len(boxes):
        return False, float("inf")
    boxes, probs, points = (np.asarray(v, dtype=np.float64) for v in (boxes, probs, points))
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    diff = max(
        np.abs(np.array([f.box for f in ours]) - boxes[order]).max(),
        np.abs(np.array([f.landmarks for f in ours]) - points[order]).max(),
        np.abs(np.array([f.score for f in ours]) - probs[order]).max(),
    )
    return True, float(diff)


def compare(ours: FaceDetector, reference, sets: dict[str, list[Path]]) -> None:
    for name, paths in sets.items():
        for pad in (0.0, 0.1):
            mismatched, worst, faces = 0, 0.0, 0
            for path in paths:
                image = rgb(path, pad=pad)
                got = ours.detect(image)
                same, diff = same_faces(got, *reference.detect(image, landmarks=True))
                mismatched += not same
                worst = max(worst, diff) if same else worst
                faces += len(got)
            print(
                f"compare {name} margin {pad:.0%}: {len(paths)} images, {faces} faces, "
                f"{mismatched} with another face count, largest difference {worst:.2e}",
                flush=True,
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40, help="calls per case and detector (photos)")
    p.add_argument("--compare", action="store_true", help="first compare the faces on every dataset image")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from facenet_pytorch import MTCNN

    reference = MTCNN(keep_all=True, post_process=False)
    ours = FaceDetector()
    fer = sorted((DATA / "fer2013" / "val").glob("*/*"))
    ckplus = sorted((DATA / "ckplus-neutral-peak").glob("**/*.png"))
    photos = DATA / "photos"
    if not fer or not ckplus or not photos.is_dir():
        print(f"data not found under {DATA} (set FMPN_DATA)", file=sys.stderr)
        return 2
    if args.compare:
        compare(ours, reference, {"FER2013 val": fer, "CK+ neutral/peak": ckplus})
    cases = {
        "FER2013 val 48 px (60 faces)": [rgb(p) for p in fer[::60]],
        "... with a 10 % margin": [rgb(p, pad=0.1) for p in fer[::60]],
        "CK+ crops 128 px (49)": [rgb(p) for p in ckplus[::30]],
        "portrait 640x480": [rgb(photos / "portrait-paul_rudd.jpg", (640, 480))],
        "group (6 faces) 640x480": [rgb(photos / "group-multiface.jpg", (640, 480))],
        "group 1200x630": [rgb(photos / "group-multiface.jpg")],
        "portrait 2048x1638": [rgb(photos / "portrait-kate_siegel.jpg")],
    }
    print(f"\ntorch threads {args.threads}; ms an image, median of alternating rounds")
    print(f"{'case':32s} {'facenet-pytorch':>15s} {'fmpn.detect':>12s} {'ratio':>6s}")
    for name, images in cases.items():
        rounds = max(3, args.rounds // len(images)) if "2048" not in name else max(3, args.rounds // 8)

        def run_theirs(images=images) -> None:
            for im in images:
                reference.detect(im, landmarks=True)

        def run_ours(images=images) -> None:
            for im in images:
                ours.detect(im)

        run_theirs()
        run_ours()
        theirs_s, ours_s = [], []
        for _ in range(rounds):
            for fn, out in ((run_theirs, theirs_s), (run_ours, ours_s)):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) / len(images) * 1000)
        a, b = statistics.median(theirs_s), statistics.median(ours_s)
        print(f"{name:32s} {a:15.1f} {b:12.1f} {b / a:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
