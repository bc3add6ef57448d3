"""Model benchmark (not a test): inference faces/s and stage-2 training img/s for each profile.

    python bench/bench_model.py                       # cpu and paper profiles, on CUDA when present
    python bench/bench_model.py --profiles cpu --seconds 5
    python bench/bench_model.py --profiles paper --batch-sizes 1,32,128,256 --compile   # a GPU
    python bench/bench_model.py --profiles cpu,cpu+cpu-fine --no-train --flip-average   # a release ensemble
    python bench/bench_model.py --profiles cpu+cpu-fine --no-train --amp bf16 --rewrites both   # what they save
    python bench/bench_model.py --profiles cpu+cpu-fine --no-train --amp bf16 --channels-last on --compile frozen

Inference is the model alone (input already on the device), under ``torch.inference_mode``, eval
mode, with the rewrites the service applies (``fmpn.models.fuse``: batch norms folded, bf16 weights under bf16
autocast, channels-last; ``--rewrites off`` times the plain model, ``both`` times each way side by side).
Training is one full stage-2 step: forward, ``lambda_cls * CE + lambda_mask * MSE(mask)``,
backward and an Adam step with the three parameter groups (FMG at ``fmg_lr``, PFN and CN at ``lr``),
on random faces, labels and target masks. Every measurement warms up first, then times runs until
its ``--seconds`` budget is spent (at least ``--min-runs`` unless one run alone is about the budget)
and reports the median. On CPU, a call foreseen (from the batches measured before it) to take over
four budgets is timed once, cold, and marked ``*``: the paper profile's large batches take tens of
seconds a call on two cores, so the whole default run stays within a few minutes.

A name joining profiles with "+" (``cpu+cpu-fine``) times an ensemble of those models, as ``fmpn release
--ensemble`` writes it (inference only: ensembles are not trained as one).

CPU timings are only meaningful on an otherwise idle machine: with another process busy, torch's
threads wait on each other (the load average is printed; ``--threads 1`` is steadier then).

On CUDA the defaults are bf16 autocast, channels_last and ``cudnn.benchmark``; ``--compile`` adds
``torch.compile``; ``--compile frozen`` compiles inference as the service does on a CPU (``FMPN_COMPILE``:
inductor with frozen weights, ``fmpn.models.fuse.compile_frozen``; training rows stay plain-compiled).
On CPU the default is fp32 (``--amp bf16`` / ``--channels-last on`` force them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fmpn.models import Ensemble, build_fmpn, class_probabilities  # noqa: E402
from fmpn.models.fuse import compile_frozen, prepare_for_inference  # noqa: E402
from fmpn.profiles import PROFILES, Profile, get_profile  # noqa: E402

GOAL_CPU_LATENCY_MS = 25.0  # cpu profile, batch 1, 2-core CPU
GOAL_CPU_TRAIN_IMG_S = 40.0  # cpu profile, stage-2 training, 2-core CPU
GOAL_GPU_PAPER_FACES_S = 3000.0  # paper profile, model only, one H200
COLD_FACTOR = 4.0  # on CPU, calls expected to exceed this many budgets are timed without a warm-up
TRAIN_COST = 3.5  # a training step costs about this many inference forwards (paper on CPU: 3.5)


@dataclass
class Result:
    profile: str
    image_size: int
    mode: str  # infer | flip | train; "-plain" added: the model without the inference rewrites
    batch: int
    runs: int
    median_s: float  # one call (a batch)
    min_s: float
    peak_mib: float | None = None  # CUDA only
    warm: bool = True  # False: timed without a warm-up (slow CPU calls)

    @property
    def per_s(self) -> float:
        return self.batch / self.median_s

    @property
    def ms_per_face(self) -> float:
        return 1000.0 * self.median_s / self.batch


@dataclass
class Settings:
    device: torch.device
    amp: bool  # bf16 autocast
    channels_last: bool
    compile: str | None  # None, "plain" or "frozen"
    warmup: int
    seconds: float
    min_runs: int
    max_runs: int


def parse_sizes(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--profiles", default="cpu,paper", help=f"comma-separated, from: {', '.join(PROFILES)}; a+b: their ensemble"
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--batch-sizes", default=None, help="inference batch sizes (default 1,32 on CPU, 1,32,256 on CUDA)")
    p.add_argument(
        "--train-batch-sizes",
        default="stage2,32",
        help="training batch sizes; 'stage2' is the profile's stage-2 batch (default stage2,32)",
    )
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument(
        "--flip-average",
        action="store_true",
        help="also time inference that averages each face with its mirror image (mode 'flip', as the release does)",
    )
    p.add_argument("--seconds", type=float, default=None, help="timed budget per measurement (default 3 CPU, 2 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 1 CPU, 5 CUDA)")
    p.add_argument("--min-runs", type=int, default=3)
    p.add_argument("--max-runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto", help="auto: bf16 on CUDA, off on CPU")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    p.add_argument(
        "--rewrites",
        choices=["on", "off", "both"],
        default="on",
        help="inference as the service runs it (on: fmpn.models.fuse), the plain model (off), or both side by side",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="plain",
        choices=["plain", "frozen"],
        default=None,
        help="torch.compile the model (dynamic=False); frozen: inference with frozen weights, as the service",
    )
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_model: --device cuda asked for, but torch sees no CUDA device")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(s: Settings) -> contextlib.AbstractContextManager:
    if s.amp:
        return torch.autocast(device_type=s.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, s: Settings) -> nn.Module:
    model = model.to(s.device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model: nn.Module, s: Settings, mode: str | None, inference: bool = False) -> nn.Module:
    if not s.compile:
        return model
    if s.compile == "frozen" and inference:
        return compile_frozen(model)
    return torch.compile(model, dynamic=False, mode=mode)


def faces(profile: Profile, batch: int, s: Settings) -> torch.Tensor:
    x = torch.rand(batch, 3, profile.image_size, profile.image_size, device=s.device)
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x


def time_runs(fn: Callable[[], object], s: Settings, expected_s: float | None = None) -> tuple[int, float, float, bool]:
    """(runs, median s, min s, warmed up) of ``fn`` within the settings' budget.

    On CPU (no compile) a call expected to take over ``COLD_FACTOR`` budgets is timed cold, without a
    warm-up: its first-call overhead is small against tens of seconds, and this keeps the paper
    profile's large batches to one run each. A warm-up that turns out slower than the budget is not
    repeated.
    """
    slow_cpu = s.device.type == "cpu" and not s.compile
    warm = not (slow_cpu and expected_s is not None and expected_s > COLD_FACTOR * s.seconds)
    for _ in range(max(s.warmup, 1) if warm else 0):
        t0 = time.perf_counter()
        fn()
        sync(s.device)
        if slow_cpu and time.perf_counter() - t0 > s.seconds:
            break
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        sync(s.device)
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= s.max_runs:
            break
        if elapsed >= s.seconds and (len(times) >= s.min_runs or elapsed + statistics.median(times) > 2 * s.seconds):
            break
    return len(times), statistics.median(times), min(times), warm


def reset_peak(s: Settings) -> None:
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)


def peak_mib(s: Settings) -> float | None:
    return torch.cuda.max_memory_allocated(s.device) / 2**20 if s.device.type == "cuda" else None


def resolve(name: str) -> Profile:
    """A profile by name; ``a+b``: an ensemble of those profiles, named so, at the first one's input size."""
    members = [get_profile(n) for n in name.split("+")]
    if any(m.image_size != members[0].image_size for m in members):
        raise ValueError(f"the members of {name} differ in input size: no ensemble")
    return members[0] if len(members) == 1 else members[0].replace(name=name)


def build(profile: Profile) -> nn.Module:
    if "+" in profile.name:
        return Ensemble([build_fmpn(get_profile(n), 7) for n in profile.name.split("+")])
    return build_fmpn(profile, 7)


def bench_inference(
    profile: Profile, batches: list[int], s: Settings, mode: str | None, flip: bool = False, rewrites: bool = True
) -> list[Result]:
    if s.compile:  # dynamo caches compilations per code object (8 at most): the models timed before would use them up
        torch._dynamo.reset()
    model = build(profile).eval()
    if rewrites:  # what the service runs: folded, channels-last, bf16 weights under bf16 autocast
        model = prepare_for_inference(model, "bfloat16" if s.amp else "float32", s.device)
    model = maybe_compile(prepare(model, s), s, mode, inference=True)
    results = []
    for batch in batches:
        x = faces(profile, batch, s)
        if rewrites:
            x = x.contiguous(memory_format=torch.channels_last)  # as the service's crops arrive (NHWC, permuted)
        reset_peak(s)

        def run(x: torch.Tensor = x) -> None:
            with torch.inference_mode(), autocast(s):
                class_probabilities(model, x, flip)

        expected = results[-1].median_s / results[-1].batch * batch if results else None
        runs, med, best, warm = time_runs(run, s, expected)
        kind = ("flip" if flip else "infer") + ("" if rewrites else "-plain")
        results.append(Result(profile.name, profile.image_size, kind, batch, runs, med, best, peak_mib(s), warm))
        print_row(results[-1], s)
    return results


def adam_groups(model: nn.Module, profile: Profile) -> torch.optim.Adam:
    """The stage-2 optimiser: FMG at ``fmg_lr``, PFN and CN at ``lr`` (the original's three groups)."""
    sched = profile.stage2
    base = model._orig_mod if hasattr(model, "_orig_mod") else model
    groups = [
        {"params": base.generator.parameters(), "lr": sched.fmg_lr},
        {"params": base.fusion.parameters(), "lr": sched.lr},
        {"params": base.classifier.parameters(), "lr": sched.lr},
    ]
    return torch.optim.Adam(groups, betas=(sched.beta1, 0.999), fused=next(model.parameters()).is_cuda)


def bench_training(
    profile: Profile, batches: list[int], s: Settings, mode: str | None, face_s: float | None = None
) -> list[Result]:
    """``face_s``: the measured inference seconds a face, to foresee slow steps on CPU."""
    model = prepare(build_fmpn(profile, 7).train(), s)
    optimizer = adam_groups(model, profile)
    model = maybe_compile(model, s, mode)
    ce, mse = nn.CrossEntropyLoss(), nn.MSELoss()
    results = []
    for batch in batches:
        x = faces(profile, batch, s)
        labels = torch.randint(0, 7, (batch,), device=s.device)
        target = torch.rand(batch, 1, profile.image_size, profile.image_size, device=s.device)
        reset_peak(s)

        def step(x: torch.Tensor = x, labels: torch.Tensor = labels, target: torch.Tensor = target) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(s):
                logits, mask = model(x)
            loss = profile.lambda_cls * ce(logits.float(), labels) + profile.lambda_mask * mse(mask.float(), target)
            loss.backward()
            optimizer.step()

        if results:
            expected = results[-1].median_s / results[-1].batch * batch
        elif face_s is not None:
            expected = TRAIN_COST * face_s * batch
        else:
            expected = None
        runs, med, best, warm = time_runs(step, s, expected)
        results.append(Result(profile.name, profile.image_size, "train", batch, runs, med, best, peak_mib(s), warm))
        print_row(results[-1], s)
    return results


HEADER = (
    f"{'profile':<12} {'size':>4} {'mode':<11} {'batch':>5} {'runs':>4} {'ms/batch':>10} {'ms/face':>9} {'faces/s':>9}"
)


def print_row(r: Result, s: Settings) -> None:
    peak = f" {r.peak_mib:>9.0f}" if r.peak_mib is not None else ""
    print(
        f"{r.profile:<12} {r.image_size:>4} {r.mode:<11} {r.batch:>5} {str(r.runs) + ('' if r.warm else '*'):>4} "
        f"{1000 * r.median_s:>10.2f} "
        f"{r.ms_per_face:>9.2f} {r.per_s:>9.1f}{peak}",
        flush=True,
    )


def find(results: list[Result], profile: str, mode: str, batch: int) -> Result | None:
    return next((r for r in results if (r.profile, r.mode, r.batch) == (profile, mode, batch)), None)


def summary(results: list[Result], profiles: list[Profile], s: Settings) -> list[str]:
    lines = []
    names = [p.name for p in profiles]
    on = "this device" if s.device.type == "cpu" else s.device.type
    if "cpu" in names:
        cpu = get_profile("cpu")
        lat = find(results, "cpu", "infer", 1)
        if lat:
            verdict = "ok" if lat.ms_per_face <= GOAL_CPU_LATENCY_MS else "MISSED"
            lines.append(
                f"cpu profile latency at batch 1: {lat.ms_per_face:.2f} ms a face on {on} "
                f"(goal <= {GOAL_CPU_LATENCY_MS:g} ms on the 2-core CPU): {verdict}"
            )
        flip = find(results, "cpu", "flip", 1)
        if lat and flip:
            verdict = "ok" if flip.ms_per_face <= GOAL_CPU_LATENCY_MS else "MISSED"
            lines.append(
                f"cpu profile latency at batch 1 with flip averaging: {flip.ms_per_face:.2f} ms a face on {on}, "
                f"{flip.median_s / lat.median_s:.2f}x plain (goal <= {GOAL_CPU_LATENCY_MS:g} ms): {verdict}"
            )
        train = find(results, "cpu", "train", cpu.stage2.batch_size)
        if train:
            verdict = "ok" if train.per_s >= GOAL_CPU_TRAIN_IMG_S else "MISSED"
            lines.append(
                f"cpu profile stage-2 training at batch {train.batch}: {train.per_s:.1f} img/s on {on} "
                f"(goal >= {GOAL_CPU_TRAIN_IMG_S:g} img/s on the 2-core CPU): {verdict}"
            )
    if "paper" in names:
        infer = [r for r in results if r.profile == "paper" and r.mode == "infer"]
        if infer:
            best = max(infer, key=lambda r: r.per_s)
            verdict = ""
            if s.device.type == "cuda":
                verdict = ": ok" if best.per_s >= GOAL_GPU_PAPER_FACES_S else ": MISSED"
            lines.append(
                f"paper profile best inference: {best.per_s:.1f} faces/s at batch {best.batch} on {on} "
                f"(goal >= {GOAL_GPU_PAPER_FACES_S:g} faces/s model-only on one H200){verdict}"
            )
    # The inference rewrites (--rewrites both): the plain model's time over the rewritten one's, per profile.
    for name in names:
        parts = []
        for r in (r for r in results if r.profile == name and r.mode in ("infer", "flip")):
            plain = find(results, name, r.mode + "-plain", r.batch)
            if plain:
                parts.append(f"{r.mode} b{r.batch} {plain.median_s / r.median_s:.2f}x")
        if parts:
            lines.append(f"{name} inference rewrites (speed-up, plain time / rewritten time): " + ", ".join(parts))
    # Side by side: every other profile against the first one listed.
    base = names[0]
    for other in names[1:]:
        parts = []
        for mode in ("infer", "train"):
            for r in (r for r in results if r.profile == base and r.mode == mode):
                o = find(results, other, mode, r.batch)
                if o:
                    parts.append(f"{mode} b{r.batch} {r.per_s / o.per_s:.1f}x")
        if parts:
            lines.append(f"{base} vs {other} (throughput ratio {base}/{other}): " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    s = Settings(
        device=device,
        amp=args.amp == "bf16" or (args.amp == "auto" and cuda),
        channels_last=args.channels_last == "on" or (args.channels_last == "auto" and cuda),
        compile=args.compile,
        warmup=args.warmup if args.warmup is not None else (5 if cuda else 1),
        seconds=args.seconds if args.seconds is not None else (2.0 if cuda else 3.0),
        min_runs=args.min_runs,
        max_runs=args.max_runs,
    )
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    profiles = [resolve(name) for name in parse_sizes(args.profiles)]
    infer_batches = [int(b) for b in parse_sizes(args.batch_sizes or ("1,32,256" if cuda else "1,32"))]

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device: {device} ({name}); torch {torch.__version__}; cuda {torch.version.cuda if cuda else '-'}")
    print(
        f"threads: {torch.get_num_threads()} torch / {os.cpu_count()} cpus; load average {load}; "
        f"precision {'bf16 autocast' if s.amp else 'fp32'}; channels_last {'on' if s.channels_last else 'off'}; "
        f"compile {s.compile or 'off'}; cudnn.benchmark {'on' if cuda else '-'}; "
        f"inference rewrites {args.rewrites}"
    )
    if not cuda and hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print("warning: the CPU is busy with other processes; CPU figures will be pessimistic")
    print(f"budget {s.seconds:g} s a measurement, warm-up {s.warmup}, min runs {s.min_runs}; medians shown")
    print()
    print(HEADER + (f" {'peak MiB':>9}" if cuda else ""))
    print("-" * (len(HEADER) + (10 if cuda else 0)))

    torch.manual_seed(0)
    results: list[Result] = []
    for profile in profiles:
        for rewrites in {"on": (True,), "off": (False,), "both": (False, True)}[args.rewrites]:
            results += bench_inference(profile, infer_batches, s, args.compile_mode, rewrites=rewrites)
            if args.flip_average:
                results += bench_inference(profile, infer_batches, s, args.compile_mode, flip=True, rewrites=rewrites)
        if not args.no_train and "+" not in profile.name:
            train_batches: list[int] = []
            for token in parse_sizes(args.train_batch_sizes):
                b = profile.stage2.batch_size if token == "stage2" else int(token)
                if b not in train_batches:
                    train_batches.append(b)
            infer = [r for r in results if r.profile == profile.name and r.mode == "infer"]
            face_s = min(r.median_s / r.batch for r in infer) if infer else None
            results += bench_training(profile, train_batches, s, args.compile_mode, face_s)
        if cuda:
            torch.cuda.empty_cache()

    print()
    print("faces/s is img/s for train rows (one full stage-2 step: forward, loss, backward, Adam)")
    if not all(r.warm for r in results):
        print(f"runs marked * were timed cold (no warm-up): one call expected over {COLD_FACTOR:g} budgets on CPU")
    for line in summary(results, profiles, s):
        print(line)
    if args.json:
        out = {
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "settings": {k: str(v) for k, v in asdict(s).items()},
            "results": [asdict(r) | {"per_s": r.per_s, "ms_per_face": r.ms_per_face} for r in results],
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
