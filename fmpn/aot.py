"""The model compiled ahead of time for the CPU (AOTInductor) by a child process, and kept on disk.

Why not ``torch.compile`` in the serving process: compiling holds the interpreter lock for its half a minute, so a
reload made photos about 20x slower meanwhile (``bench/bench_reload.py``); every start traced the model again; and
the compiled graph's Python wrapper takes the lock for each kernel, so any busy Python thread beside it (the event
loop, JSON, PNG encoding) slows every forward pass. An AOTInductor package is compiled by ``python -m fmpn.aot`` in
a child process at a lower priority, stored in a cache folder under a key of everything it depends on, and runs in
C++ without the lock. One package per batch shape: torch 2.14 packs no weights for a dynamic batch, and such a
package scored wrong (logits off by up to 2.6).

Nothing here imports ``app/`` or ``training/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

FORMAT = 1  # what a package holds and how it is called; a change makes new keys, so old packages are not loaded
BUILD_TIMEOUT_S = 1800  # a child compiling for longer is stopped (about 20 s a shape on 2 cores, idle)
BUILD_PROCESSES = 2  # children compiling at once, at most: each needs about a core and 1-2 GB while it compiles
MAX_AGE_DAYS = 30  # packages not loaded for this long are deleted from the cache folder


def default_cache_dir() -> Path:
    """``fmpn-compiled`` in inductor's cache folder (``TORCHINDUCTOR_CACHE_DIR``, by default
    ``/tmp/torchinductor_<user>``), beside the kernels it compiles: one folder to keep (the CPU image's volume)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "fmpn-compiled"


def package_path(cache_dir: Path, weights_sha256: str, precision: str, batch: int) -> Path:
    """Where the package of these weights, precision and batch lives: its key also holds torch's version and the
    CPU's instruction set, since the kernels are built for both (a cache folder moved to another machine builds
    anew rather than crash)."""
    parts = [FORMAT, torch.__version__, weights_sha256, precision, batch]
    parts += [platform.machine(), torch.backends.cpu.get_cpu_capability()]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{weights_sha256[:12]}-{precision}-b{batch}-{key}.pt2"


class _Autocast(nn.Module):
    """The model under bf16 autocast, exported as it runs in the service: autocast around ``export`` is not
    recorded in the graph, autocast inside the traced forward is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def compile_package(model: nn.Module, precision: str, batch: int, size: int, path: Path) -> None:
    """Export a prepared CPU ``model`` (``fmpn.models.fuse.prepare_for_inference``) for (batch, 3, size, size)
    channels-last input and compile it with frozen weights into ``path``, written whole or not at all."""
    x = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    module = _Autocast(model) if precision == "bfloat16" else model
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")  # the compiler wants a .pt2 name
    try:
        with torch.no_grad():  # inductor freezes the weights (and prepacks them for oneDNN) only without grad
            program = torch.export.export(module, (x,))
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(partial), inductor_configs={"freezing": True}
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def build_packages(weights: Path, weights_sha256: str, precision: str, batches: list[int], cache_dir: Path) -> dict:
    """The packages of ``batches`` for these weights, compiled where not in ``cache_dir`` yet by up to
    ``BUILD_PROCESSES`` child processes at once (each compiles on one core; this thread waits without the
    interpreter lock). A failed build raises RuntimeError with a child's last error line."""
    paths = {b: package_path(cache_dir, weights_sha256, precision, b) for b in batches}
    missing = [b for b, p in paths.items() if not p.is_file()]
    if not missing:
        return paths
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    n = max(1, min(BUILD_PROCESSES, os.cpu_count() or 1, len(missing)))
    package_root = str(Path(__file__).resolve().parents[1])  # `-m fmpn.aot` from any working folder
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    children = []
    for share in (missing[i::n] for i in range(n)):
        command = [sys.executable, "-m", "fmpn.aot", str(weights), "--sha256", weights_sha256]
        command += ["--precision", precision, *(f"--out={b}={paths[b]}" for b in share)]
        log = tempfile.TemporaryFile("w+", dir=cache_dir)  # not a pipe: a child that writes much never waits
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        children.append((child, log))
    errors = []
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    for child, log in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        with log:
            log.seek(0)
            lines = [line for line in log.read().strip().splitlines() if line.strip()]
        if child.returncode != 0:
            stopped = f"compiling took over {BUILD_TIMEOUT_S} s and was stopped" if child.returncode < 0 else None
            errors.append(stopped or (lines[-1] if lines else f"the compiling process exited with {child.returncode}"))
    if errors or not all(paths[b].is_file() for b in missing):
        raise RuntimeError(errors[0] if errors else "the compiling process wrote no package")
    return paths


@contextmanager
def _temp_dir(folder: Path) -> Iterator[None]:
    """Packages unpack their shared library into the temp folder to load it: the cache folder's own, since /tmp is
    often mounted noexec in containers (the compose file does so)."""
    folder.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before


def prune(cache_dir: Path, keep: Iterable[Path], max_age_days: float = MAX_AGE_DAYS) -> int:
    """Delete the packages (and leftovers of stopped builds) not loaded for ``max_age_days``, except ``keep``: the
    folder holds the weights served lately, not every file ever served. Returns how many were deleted."""
    cutoff = time.time() - max_age_days * 86400
    kept = {Path(p).resolve() for p in keep}
    deleted = 0
    for path in Path(cache_dir).glob("*.pt2"):
        try:
            if path.resolve() not in kept and path.stat().st_mtime < cutoff:
                path.unlink()
                deleted += 1
        except OSError:  # another process pruned or replaced it first
            continue
    return deleted


class CompiledModel:
    """Called like the model, ``(x) -> (logits, mask)``, with one of the loaded packages' batch sizes; the input is
    made channels-last contiguous, the layout the packages were compiled for. Loading marks each package as used
    (its time), which :func:`prune` reads."""

    def __init__(self, paths: Mapping[int, Path]) -> None:
        folder = Path(next(iter(paths.values()))).parent
        with _temp_dir(folder / "unpacked"):
            self.runners = {b: torch._inductor.aoti_load_package(str(p)) for b, p in sorted(paths.items())}
        for path in paths.values():
            os.utime(path)
        prune(folder, paths.values())

    @property
    def batches(self) -> list[int]:
        return list(self.runners)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        runner = self.runners.get(len(x))
        if runner is None:
            raise ValueError(f"no package compiled for a batch of {len(x)} (compiled: {self.batches})")
        return runner(x.contiguous(memory_format=torch.channels_last))


def compile_model(
    weights: Path, weights_sha256: str, precision: str, batches: list[int], cache_dir: Path | None = None
) -> CompiledModel:
    """The model of ``weights`` compiled for each of ``batches`` (built by a child where not cached) and loaded."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return CompiledModel(build_packages(weights, weights_sha256, precision, batches, folder))


def main(argv: list[str] | None = None) -> int:
    """The child: compile the packages its parent asked for, at a lower priority than the service."""
    p = argparse.ArgumentParser(prog="python -m fmpn.aot", description="compile a checkpoint's model ahead of time")
    p.add_argument("weights")
    p.add_argument("--sha256", required=True, help="the content the parent loaded; a changed file is refused")
    p.add_argument("--precision", choices=["float32", "bfloat16"], required=True)
    p.add_argument("--out", action="append", required=True, metavar="BATCH=PATH")
    args = p.parse_args(argv)
    os.nice(10)  # the service's threads first: a reload compiles while photos are answered

    from fmpn.checkpoint import file_sha256, load_checkpoint
    from fmpn.models.fuse import prepare_for_inference

    weights = Path(args.weights)
    if file_sha256(weights) != args.sha256:
        raise SystemExit(f"the weights file {weights} changed while the model was being compiled")
    checkpoint = load_checkpoint(weights)
    model = prepare_for_inference(checkpoint.build_model(), args.precision, torch.device("cpu"))
    for item in args.out:
        batch, path = item.split("=", 1)
        compile_package(model, args.precision, int(batch), checkpoint.profile.image_size, Path(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
