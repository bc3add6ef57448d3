"""The model compiled ahead of time for the CPU (AOTInductor) by child processes, and kept on disk.

Why not ``torch.compile`` in the serving process: compiling holds the interpreter lock for its half a minute, so a
reload made photos about 20x slower meanwhile (``bench/bench_reload.py``); every start traced the model again; and
the compiled graph's Python wrapper takes the lock for each kernel, so any busy Python thread beside it (the event
loop, JSON, PNG encoding) slows every forward pass. An AOTInductor package is compiled by ``python -m fmpn.aot`` in
a child process at a lower priority, unpacked into a folder of the cache under a key of everything it depends on,
and runs in C++ without the lock. One package per batch shape: torch 2.14 packs no weights for a dynamic batch, and
such a package scored wrong (logits off by up to 2.6).

A package is loaded from its unpacked folder (torch's loader takes a folder as it takes a ``.pt2`` file, without
unpacking it into the temp folder, which containers often mount noexec). A folder appears whole or not at all: it is
unpacked under a random name and renamed.

Nothing here imports ``app/`` or ``training/``.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

FORMAT = 2  # what a package holds and how it is called; a change makes new keys, so old packages are not loaded
BUILD_TIMEOUT_S = 1800  # children compiling for longer are stopped (about 25 s a shape on 2 idle cores)
BUILD_PROCESSES = 2  # children compiling at once, at most: each needs about a core and 1-2 GB while it compiles
MAX_AGE_DAYS = 30  # packages not loaded for this long are deleted from the cache folder
_PARTIAL = ".partial"  # suffix of folders and files still being written

# Names of what this module writes in a cache folder: packages, their partial builds, a build's scratch folder.
_OURS = re.compile(
    r"[0-9a-f]{12}-(float32|bfloat16)-b\d+-[0-9a-f]{16}(\.[0-9a-f]{12}\.partial(\.pt2)?)?"  # a package, a partial one
    r"|\.build-.+\.partial"  # a build's scratch folder
)

# The sources whose code a package compiles: a change to any of them (a rewrite in fuse.py, a layer) makes new keys.
_SOURCES = ("aot.py", "checkpoint.py", "profiles.py", "precision.py", "models/*.py")


def default_cache_dir() -> Path:
    """``fmpn-compiled`` in inductor's cache folder (``TORCHINDUCTOR_CACHE_DIR``, by default
    ``/tmp/torchinductor_<user>``), beside the kernels it compiles: one folder to keep (the CPU image's volume)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "fmpn-compiled"


def _code_digest() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for pattern in _SOURCES for p in root.glob(pattern)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _cpu_digest() -> str:
    """The CPU's instruction set as the kernels may use it: its flags (AVX-512 VNNI, BF16, AMX ... ), not only
    torch's coarse level, for inductor picks kernels and compiler flags by them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha256(f"{flags} {torch.backends.cpu.get_cpu_capability()}".encode()).hexdigest()


def _build_identity() -> list:
    """What every package of this process is built for besides its weights, precision and batch: the code that
    builds the network, torch's version, the CPU's instruction set and torch's thread count (read from disk and
    /proc: computed once per build, not once per package)."""
    return [FORMAT, _code_digest(), torch.__version__, platform.machine(), _cpu_digest(), torch.get_num_threads()]


def package_path(
    cache_dir: Path, weights_sha256: str, precision: str, batch: int, identity: list | None = None
) -> Path:
    """The folder of the package of these weights, precision and batch, keyed also by :func:`_build_identity`
    (``identity``, or computed): a package is built for each (a cache folder moved to another machine or kept across
    an upgrade builds anew rather than load stale code)."""
    parts = [*(identity if identity is not None else _build_identity()), weights_sha256, precision, batch]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{weights_sha256[:12]}-{precision}-b{batch}-{key}"


class _Autocast(nn.Module):
    """The model under bf16 autocast, exported as it runs in the service: autocast around ``export`` is not
    recorded in the graph, autocast inside the traced forward is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def compile_package(model: nn.Module, precision: str, batch: int, size: int, folder: Path) -> None:
    """Export a prepared CPU ``model`` (``fmpn.models.fuse.prepare_for_inference``) for (batch, 3, size, size)
    channels-last input, compile it with frozen weights and unpack the package into ``folder``, which appears whole
    or not at all (another process may build the same one: the first to finish wins, both are the same)."""
    x = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    module = _Autocast(model) if precision == "bfloat16" else model
    partial = folder.with_name(f"{folder.name}.{secrets.token_hex(6)}{_PARTIAL}")
    archive = partial.with_name(partial.name + ".pt2")  # the compiler wants a .pt2 name
    try:
        with torch.no_grad():  # inductor freezes the weights (and prepacks them for oneDNN) only without grad
            program = torch.export.export(module, (x,))
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(archive), inductor_configs={"freezing": True}
            )
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(partial)
        (inner,) = partial.iterdir()  # the archive holds one top folder
        try:
            inner.rename(folder)
        except OSError:
            if not folder.is_dir():  # not "another process finished it first"
                raise
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(partial, ignore_errors=True)


def build_packages(
    weights: Path, weights_sha256: str, precision: str, batches: list[int], cache_dir: Path
) -> dict[int, Path]:
    """The package folders of ``batches`` for these weights, compiled where not in ``cache_dir`` yet by up to
    ``BUILD_PROCESSES`` child processes at once (each compiles on one core; this thread waits without the
    interpreter lock). A failed build raises RuntimeError with a child's last error line."""
    identity = _build_identity()
    paths = {b: package_path(cache_dir, weights_sha256, precision, b, identity) for b in batches}
    missing = [b for b, p in paths.items() if not p.is_dir()]
    if not missing:
        return paths
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    if hasattr(os, "ST_NOEXEC") and os.statvfs(cache_dir).f_flag & os.ST_NOEXEC:
        raise RuntimeError(f"{cache_dir} is on a noexec mount, where a compiled model cannot be loaded")
    n = max(1, min(BUILD_PROCESSES, os.cpu_count() or 1, len(missing)))
    package_root = str(Path(__file__).resolve().parents[1])  # this code, not a copy in the working folder (-P)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    # Inductor's own files of a build (a copy of each library, precompiled headers: hundreds of MB) in a folder of
    # the build's, deleted after it: the cache keeps the packages alone, which prune() looks after.
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{secrets.token_hex(4)}-", suffix=_PARTIAL, dir=cache_dir))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch)
    children: list[tuple[subprocess.Popen, object]] = []
    errors: list[str] = []
    try:
        for share in (missing[i::n] for i in range(n)):
            command = [sys.executable, "-P", "-m", "fmpn.aot", str(Path(weights).resolve()), "--sha256", weights_sha256]
            command += ["--precision", precision, "--threads", str(torch.get_num_threads())]
            command += ["--parent", str(os.getpid()), *(f"--out={b}={paths[b]}" for b in share)]
            log = tempfile.TemporaryFile("w+b", dir=cache_dir)  # not a pipe: a child that writes much never waits
            child = subprocess.Popen(  # a session of its own: a timeout stops its compilers too
                command, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True
            )
            children.append((child, log))
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        for child, log in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                errors.append(f"compiling took over {BUILD_TIMEOUT_S} s and was stopped")
                continue
            if child.returncode != 0:
                log.seek(0)
                lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
                errors.append(lines[-1] if lines else f"the compiling process exited with {child.returncode}")
    finally:
        for child, log in children:  # stopped: a timeout, or this thread interrupted
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    child.kill()
                child.wait()
            log.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if errors or not all(paths[b].is_dir() for b in missing):
        raise RuntimeError(errors[0] if errors else "the compiling process wrote no package")
    return paths


def prune(cache_dir: Path, keep: Iterable[Path], max_age_days: float = MAX_AGE_DAYS) -> int:
    """Delete the packages not loaded for ``max_age_days`` (and leftovers of builds stopped as long ago), except
    ``keep``: the folder holds the weights served lately, not every file ever served. Returns how many."""
    cutoff = time.time() - max_age_days * 86400
    kept = {Path(p).resolve() for p in keep}
    deleted = 0
    for path in Path(cache_dir).iterdir():
        try:
            if not _OURS.fullmatch(path.name) or path.resolve() in kept or path.stat().st_mtime >= cutoff:
                continue  # only packages and build leftovers by their names: the folder may be a caller's own
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            deleted += 1
        except OSError:  # another process pruned or replaced it first
            continue
    return deleted


def _load(folder: Path):  # noqa: ANN202 - torch's AOTICompiledModel
    from torch._inductor.package.package import AOTICompiledModel

    return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(folder), "model", False, 1, -1))


class BrokenPackage(RuntimeError):
    """A cached package that does not load."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(f"the compiled package {path} does not load: {error}")
        self.path = path


class CompiledModel:
    """Called like the model, ``(x) -> (logits, mask)``, with one of the loaded packages' batch sizes; the input is
    made channels-last contiguous, the layout the packages were compiled for. Loading marks each package as used
    (its folder's time), which :func:`prune` reads."""

    def __init__(self, paths: Mapping[int, Path]) -> None:
        self.runners = {}
        for batch, path in sorted(paths.items()):
            try:
                self.runners[batch] = _load(path)
            except Exception as exc:
                raise BrokenPackage(path, exc) from exc
        try:
            for path in paths.values():
                os.utime(path)
            prune(Path(next(iter(paths.values()))).parent, paths.values())
        except OSError:  # a read-only cache folder: loaded all the same
            pass

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
    """The model of ``weights`` compiled for each of ``batches`` (built by children where not cached) and loaded. A
    cached package that does not load (a disk error, a build stopped by a crash of old) is built again, once."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return CompiledModel(build_packages(weights, weights_sha256, precision, batches, folder))
    except BrokenPackage as broken:
        shutil.rmtree(broken.path, ignore_errors=True)
        return CompiledModel(build_packages(weights, weights_sha256, precision, batches, folder))


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this child when its parent ends (a service stopped mid-build leaves no compiler)."""
    if not parent:  # run by hand
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the line above
        raise SystemExit("the service that asked for the compiled model has stopped")


def main(argv: list[str] | None = None) -> int:
    """The child: compile the packages its parent asked for, at a lower priority than the service."""
    p = argparse.ArgumentParser(prog="python -m fmpn.aot", description="compile a checkpoint's model ahead of time")
    p.add_argument("weights")
    p.add_argument("--sha256", required=True, help="the content the parent loaded; a changed file is refused")
    p.add_argument("--precision", choices=["float32", "bfloat16"], required=True)
    p.add_argument("--out", action="append", required=True, metavar="BATCH=FOLDER")
    p.add_argument("--threads", type=int, default=0, help="torch threads the model will run with (0: torch's default)")
    p.add_argument("--parent", type=int, default=0, help="the parent's process id: end with it")
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    os.nice(10)  # the service's threads first: a reload compiles while photos are answered
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from fmpn.checkpoint import load_checkpoint
    from fmpn.models.fuse import prepare_for_inference

    weights = Path(args.weights)
    checkpoint = load_checkpoint(weights)  # its sha256 from the bytes the network is built from
    if checkpoint.sha256 != args.sha256:
        raise SystemExit(f"the weights file {weights} changed while the model was being compiled")
    model = prepare_for_inference(checkpoint.build_model(), args.precision, torch.device("cpu"))
    for item in args.out:
        batch, folder = item.split("=", 1)
        compile_package(model, args.precision, int(batch), checkpoint.profile.image_size, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
