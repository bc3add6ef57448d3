"""The served model three ways, side by side in one process: eager, ``torch.compile`` with frozen weights
(``fmpn.models.fuse.compile_frozen``, the service's compiled model before session 60) and compiled ahead of time
(``fmpn/aot.py``, the service's now). Milliseconds a face at each batch of faces (mirrored as served: each face and
its mirror image), alternating rounds; then the same beside a Python thread that only spins, as the event loop,
JSON and PNG encoding do under load: kernels called from Python wait for the interpreter lock, a package's C++
does not.

    python bench/bench_compiled.py --threads 2                 # the released file
    python bench/bench_compiled.py --threads 2 --batches 1,8 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import numpy as np
import torch
from _common import add_server_args, resolve_weights

from fmpn.aot import compile_model
from fmpn.inference import Predictor
from fmpn.models import class_probabilities
from fmpn.models.fuse import compile_frozen
from fmpn.precision import autocast


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--batches", default="1,8", help="faces per forward pass, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per way and batch")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per round")
    return p.parse_args()


def per_face_ms(fn, x: torch.Tensor, seconds: float) -> float:  # noqa: ANN001 - the model as called
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += 1
    return (time.perf_counter() - t0) / n / len(x) * 1000


def spin(stop: threading.Event) -> None:
    """Python bytecode and nothing else, until ``stop``: it holds the interpreter lock whenever it runs."""
    while not stop.is_set():
        pass


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    weights, note = resolve_weights(args)
    predictor = Predictor(weights, "cpu", precision=args.precision, flip_average=True)
    batches = [int(b) for b in args.batches.split(",")]
    model, precision, size = predictor.model, predictor.precision, predictor.profile.image_size
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fmpn-bench-compiled-") as cache:
        aot = compile_model(predictor.weights, predictor.sha256, precision, [2 * b for b in batches], cache)
        built = time.perf_counter() - t0
        print(f"{weights.name}{note}: {precision}, {args.threads} threads; packages built in {built:.1f} s")
        frozen = compile_frozen(model)
        ways = {"eager": model, "torch.compile": frozen, "aot": aot}

        def run(way: str):  # noqa: ANN202 - the served call: probabilities of faces and their mirror images
            def call(x: torch.Tensor) -> object:
                with autocast(precision, predictor.device):
                    return class_probabilities(ways[way], x, flip_average=True)

            return call

        rng = np.random.default_rng(0)
        inputs = {b: torch.from_numpy(rng.random((b, 3, size, size), dtype=np.float32)) for b in batches}
        inputs = {b: x.contiguous(memory_format=torch.channels_last) for b, x in inputs.items()}
        for x in inputs.values():  # compile each shape before timing
            with torch.inference_mode():
                run("torch.compile")(x)
        for busy in (False, True):
            stop = threading.Event()
            spinner = threading.Thread(target=spin, args=(stop,), daemon=True)
            if busy:
                spinner.start()
            label = "beside a spinning Python thread" if busy else "alone"
            for b, x in inputs.items():
                times: dict[str, list[float]] = {w: [] for w in ways}
                for _ in range(args.rounds):
                    for way in ways:
                        times[way].append(per_face_ms(run(way), x, args.seconds / (4 if busy else 1)))
                med = {w: statistics.median(t) for w, t in times.items()}
                row = ", ".join(f"{w} {' / '.join(f'{v:.1f}' for v in t)}" for w, t in times.items())
                print(
                    f"{label}, batch {b} mirrored: ms a face {row}; aot / torch.compile "
                    f"{med['aot'] / med['torch.compile']:.2f}, aot / eager {med['aot'] / med['eager']:.2f}"
                )
            stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
