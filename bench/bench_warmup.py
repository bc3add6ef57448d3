"""Start-up benchmark (not a test): the compiled model's start with an empty and with a filled cache folder.

Each run is a fresh process, as a restarted service is: it loads the weights into the service's predictor with
``compile=True`` (on a CPU: the four batch shapes compiled ahead of time by child processes, ``fmpn/aot.py``, or
loaded when already in the folder) and warms it up, with the cache in one directory (``TORCHINDUCTOR_CACHE_DIR``, as
the CPU image sets it). The first run finds the directory empty; the later ones find what the first compiled.

    python bench/bench_warmup.py --runs 3 --threads 2
    TMPDIR=/mnt/noexec python bench/bench_warmup.py --runs 1 --cache /var/tmp/kernels   # /tmp need not be exec
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"


def child(weights: Path, threads: int) -> None:
    t0 = time.perf_counter()
    import torch

    sys.path.insert(0, str(ROOT))
    from fmpn.inference import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor(weights, "cpu", compile=True)
    t1 = time.perf_counter()
    predictor.warmup()
    t2 = time.perf_counter()
    print(f"load {t1 - t0:.1f} s, warm-up {t2 - t1:.1f} s, compiled {predictor.info()['compiled']}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--runs", type=int, default=3, help="processes in turn; the first finds the cache empty")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None, help="the cache directory (default: a fresh one in TMPDIR)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.weights, args.threads)
        return 0
    with tempfile.TemporaryDirectory(prefix="fmpn-inductor-") as fresh:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(args.cache or fresh))
        for run in range(args.runs):
            cmd = [sys.executable, __file__, "--child", "--weights", str(args.weights), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
            print(f"run {run + 1} ({'empty' if run == 0 else 'filled'} cache): {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
