"""Precision benchmark (not a test): float32 against bf16 autocast for the cpu profile, side by side in one run.

    python bench/bench_precision.py --threads 1                  # speed: inference (plain, mirrored) and training
    python bench/bench_precision.py --threads 1 --val ../shared/data/fer2013/val   # + the released model's accuracy

Speed: the same measurements as ``bench_model.py`` (random faces, the model alone), each precision timed
twice in alternating order (fp32, bf16, bf16, fp32) so that a change in the machine's load hits both; the
table shows the mean of the two medians and the ratio. bf16 only pays on CPUs that compute in it natively
(AVX512-BF16, AMX: ``fmpn.precision.cpu_has_native_bf16``, printed). ``--val``: the released weights'
accuracy on a folder of faces in both precisions, each face averaged with its mirror image as the service
does, and how many faces the two precisions label differently.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import Result, Settings, bench_inference, bench_training  # noqa: E402

from fmpn.precision import cpu_has_native_bf16  # noqa: E402
from fmpn.profiles import get_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed budget per measurement")
    p.add_argument("--batch-sizes", default="1,32", help="inference batch sizes")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--val", type=Path, help="folder of faces (root/<class>/<img>) to score the released weights on")
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    return p.parse_args(argv)


def measure(amp: bool, args: argparse.Namespace) -> list[Result]:
    s = Settings(  # bf16 together with channels_last, as on a GPU
        device=torch.device("cpu"),
        amp=amp,
        channels_last=amp,
        compile=False,
        warmup=1,
        seconds=args.seconds,
        min_runs=3,
        max_runs=200,
    )
    profile = get_profile("cpu")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = bench_inference(profile, batches, s, None) + bench_inference(profile, batches, s, None, flip=True)
    return results + bench_training(profile, [args.train_batch], s, None)


def accuracy(args: argparse.Namespace) -> None:
    from fmpn.checkpoint import load_checkpoint
    from fmpn.data import folder_samples
    from training.evaluate import ensemble_probabilities, remap, score

    ckpt = load_checkpoint(args.weights)
    split, _, _ = remap(folder_samples(args.val), ckpt.classes)
    preds = {}
    for name, amp in (("float32", False), ("bfloat16", True)):
        probs, labels = ensemble_probabilities([ckpt], split, torch.device("cpu"), flip_average=True, amp=amp)
        result = score(probs, labels, list(split.classes))
        preds[name] = probs.argmax(1)
        print(
            f"{args.weights.name} on {args.val}, mirrored, {name}: accuracy {result.accuracy:.4f} "
            f"({round(result.accuracy * result.n)}/{result.n})",
            flush=True,
        )
    differ = int((preds["float32"] != preds["bfloat16"]).sum())
    print(f"faces labelled differently by the two precisions: {differ} of {len(split.samples)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"torch {torch.__version__}; {torch.get_num_threads()} threads; load average {load}; "
        f"native bf16 on this CPU: {cpu_has_native_bf16()}"
    )
    rounds: dict[bool, list[list[Result]]] = {False: [], True: []}
    for amp in (False, True, True, False):
        print(f"-- {'bf16 autocast, channels_last' if amp else 'float32'}", flush=True)
        rounds[amp].append(measure(amp, args))
    print()
    print(f"{'mode':<6} {'batch':>5} {'fp32 ms/face':>13} {'bf16 ms/face':>13} {'speed-up':>9}")
    for k, row in enumerate(rounds[False][0]):
        fp32 = statistics.fmean(r[k].ms_per_face for r in rounds[False])
        bf16 = statistics.fmean(r[k].ms_per_face for r in rounds[True])
        print(f"{row.mode:<6} {row.batch:>5} {fp32:>13.2f} {bf16:>13.2f} {fp32 / bf16:>8.2f}x")
    if args.val:
        print()
        accuracy(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
