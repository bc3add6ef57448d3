"""Pieces shared by bench_load.py and bench_soak.py, on top of bench_service.py's helpers (photos, the random
checkpoint, the server subprocess): the weights to serve, the server as a context manager, the server's RSS, and a
tally of every answer that tells deliberate backpressure (429, 503 with Retry-After) from real errors."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_service import DEFAULT_WEIGHTS, ROOT, free_port, random_checkpoint, start_server, wait_ready

PHOTOS = Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data")) / "photos"

# Error codes that are the service protecting itself (the client should back off and retry), not failures.
BACKPRESSURE = {429: {"rate_limited"}, 503: {"queue_full", "not_ready"}}


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The options ``bench_service.start_server`` reads, plus the weights and the photos."""
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="checkpoint (default: %(default)s)")
    p.add_argument("--random-init", action="store_true", help="serve a random CPU-profile model")
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of .jpg photos (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="FMPN_PRECISION: auto, float32, float16 or bfloat16")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (1: robust on a shared CPU)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)


def resolve_weights(args: argparse.Namespace) -> tuple[Path, str]:
    """``--weights`` when it exists (and no ``--random-init``), else a random CPU-profile checkpoint."""
    if not args.random_init and args.weights.is_file():
        return args.weights, ""
    if not args.random_init:
        print(f"note: {args.weights} not found; using a randomly initialised CPU-profile model", file=sys.stderr)
    return random_checkpoint(), " (random init: timings as for trained weights of that profile, labels meaningless)"


@contextmanager
def running_server(
    args: argparse.Namespace, weights: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen, dict]]:
    """``uvicorn app.main:app`` on a free 127.0.0.1 port until ready: (url, process, /readyz body)."""
    port = free_port()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})  # start_server passes this environment on (FMPN_* settings it does not set)
    try:
        proc = start_server(args, weights, port)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, proc, asyncio.run(wait_ready(url, proc))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of a process, MiB (Linux /proc); ``field`` "VmHWM": the most it has had."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


class Tally:
    """Every answer by status (and error code); which of them are failures."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # failure kind -> one message

    def record(self, status: int, body: object = None, headers=None, expected: tuple[int, ...] = (200,)) -> str:
        """Count one answer; returns its kind: 'ok', 'backpressure' or 'failure'."""
        code = body.get("error", {}).get("code") if isinstance(body, dict) and "error" in body else None
        key = f"{status} {code}" if code else str(status)
        self.counts[key] += 1
        if status in expected:
            return "ok"
        if code in BACKPRESSURE.get(status, ()) and (status == 429 or "retry-after" in (headers or {})):
            return "backpressure"
        self.failures[key] += 1
        self.examples.setdefault(key, str(body)[:300])
        return "failure"

    def transport_error(self, exc: BaseException) -> None:
        key = f"transport error {type(exc).__name__}"
        self.counts[key] += 1
        self.failures[key] += 1
        self.examples.setdefault(key, str(exc)[:300] or repr(exc))

    def failed(self, what: str, message: str) -> None:
        """A 2xx that was wrong all the same (e.g. a malformed body)."""
        self.failures[what] += 1
        self.examples.setdefault(what, message[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "none"

    def verdict(self) -> tuple[bool, str]:
        if not self.failures:
            backpressure = sum(v for k, v in self.counts.items() if k.split(" ")[0] in ("429", "503"))
            return True, f"OK: no errors ({backpressure} deliberate 429/503 backpressure answers)"
        lines = [f"FAILED: {sum(self.failures.values())} answers were errors other than 429/503 backpressure:"]
        lines += [f"  {k}: {v} (e.g. {self.examples.get(k, '')})" for k, v in sorted(self.failures.items())]
        return False, "\n".join(lines)
