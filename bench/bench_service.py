"""Service benchmark (not a test): the real server over HTTP vs the same pipeline in process.

Starts ``uvicorn app.main:app`` on 127.0.0.1 in a subprocess, sweeps 1, 4 and 16 concurrent clients
posting the photos of ``../shared/data/photos`` (resized to 640x480, JPEG, in memory) for a fixed time
each, and prints req/s, faces/s and p50/p95/p99 latency per level. In the same run it times the
in-process detector + model (``Predictor.predict``) on the same images, one at a time and in batches of
``--max-batch``, and prints the ratios the service is held to:

* HTTP p50 at 1 client <= 1.25 x in-process p50 (batch 1)
* faces/s at 16 clients >= 0.85 x in-process faces/s at the batch limit

    python bench/bench_service.py                         # weights/fmpn-cpu-fer2013.safetensors
    python bench/bench_service.py --random-init --duration 10

Without the default weights (or with ``--random-init``) a randomly initialised CPU-profile model is
used: the timings are the same as for trained weights of that profile, the labels are meaningless.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_WEIGHTS = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"
FER2013 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--random-init", action="store_true", help="use a random CPU-profile model")
    p.add_argument(
        "--photos", type=Path, default=Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data")) / "photos"
    )
    p.add_argument("--size", default="640x480", help="photos are resized to this (WxH)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--levels", default="1,4,16", help="concurrent clients per level")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="FMPN_PRECISION: auto, float32, float16 or bfloat16")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="FMPN_COMPILE, both sides")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads, server and in-process (1: robust on a shared CPU)"
    )
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--inprocess-seconds", type=float, default=6.0, help="time for each in-process measurement")
    p.add_argument("--mask", action=argparse.BooleanOptionalAction, default=True, help="ask for masks in responses")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def load_photos(folder: Path, size: tuple[int, int]) -> list[tuple[str, bytes]]:
    from PIL import Image, ImageOps

    if not folder.is_dir():
        raise SystemExit(f"photos not found at {folder} (set FMPN_DATA or --photos)")
    out = []
    for path in sorted(folder.glob("*.jpg")):
        im = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append((path.stem, buf.getvalue()))
    if not out:
        raise SystemExit(f"no .jpg photos in {folder}")
    return out


def random_checkpoint() -> Path:
    import torch

    from fmpn.checkpoint import save_checkpoint
    from fmpn.models import build_fmpn
    from fmpn.profiles import CPU

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="fmpn-bench-"))
    return save_checkpoint(
        folder / "random-cpu.safetensors", build_fmpn(CPU, 7), CPU, FER2013, config={"name": "random-cpu"}
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- in process ----------------------------------------------------------------------------------


def make_predictor(args: argparse.Namespace, weights: Path, photos: list[tuple[str, bytes]]):
    import torch

    from fmpn.inference import COMPILE_SETTINGS, Predictor, decode_image

    torch.set_num_threads(args.threads)
    compile = COMPILE_SETTINGS[args.compile]
    predictor = Predictor(weights, args.device, precision=args.precision, detect_max_side=1280, compile=compile)
    predictor.warmup()
    images = [decode_image(data).rgb for _, data in photos]
    for im in images:  # warm the detector on these sizes
        predictor.predict([im])
    return predictor, images


def in_process(args: argparse.Namespace, predictor, images: list, photos: list[tuple[str, bytes]]) -> dict:
    times, faces = [], []
    deadline = time.perf_counter() + args.inprocess_seconds
    i = 0
    while time.perf_counter() < deadline or i < 2 * len(images):
        im = images[i % len(images)]
        t0 = time.perf_counter()
        (res,) = predictor.predict([im])
        times.append(time.perf_counter() - t0)
        faces.append(len(res.faces))
        i += 1
    per_image = {name: [] for name, _ in photos}
    for k, t in enumerate(times):
        per_image[photos[k % len(photos)][0]].append(t)

    batch = [images[k % len(images)] for k in range(args.max_batch)]
    n_batches, n_faces = 0, 0
    t_start = time.perf_counter()
    deadline = t_start + args.inprocess_seconds
    while time.perf_counter() < deadline or n_batches < 2:
        results = predictor.predict(batch)
        n_faces += sum(len(r.faces) for r in results)
        n_batches += 1
    elapsed = time.perf_counter() - t_start
    return {
        "single_p50_ms": pct(times, 50) * 1000,
        "single_mean_ms": statistics.fmean(times) * 1000,
        "single_per_photo_ms": {k: statistics.median(v) * 1000 for k, v in per_image.items() if v},
        "faces_per_image": statistics.fmean(faces),
        "batch_images_per_s": n_batches * len(batch) / elapsed,
        "batch_faces_per_s": n_faces / elapsed,
        "device": f"{predictor.device}, {predictor.precision}{', compiled' if predictor.compiled is not None else ''}",
    }


def report_in_process(when: str, ref: dict, max_batch: int) -> None:
    print(
        f"in-process detector+model, {when}: p50 {ref['single_p50_ms']:.1f} ms/image (batch 1, "
        f"{ref['faces_per_image']:.2f} faces/image); batch of {max_batch}: "
        f"{ref['batch_images_per_s']:.2f} img/s, {ref['batch_faces_per_s']:.2f} faces/s [{ref['device']}]"
    )


def paired(url: str, predictor, images: list, photos: list[tuple[str, bytes]], seconds: float, mask: bool) -> dict:
    """Alternate one in-process predict and one HTTP request of the same photo: both see the same load."""
    import httpx

    local, http = [], []
    params = {"mask": "true" if mask else "false"}
    with httpx.Client(base_url=url, timeout=120) as client:
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline or i < 2 * len(photos):
            k = i % len(photos)
            t0 = time.perf_counter()
            predictor.predict([images[k]])
            local.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = client.post(
                "/v1/predictions", content=photos[k][1], params=params, headers={"Content-Type": "image/jpeg"}
            )
            r.json()
            http.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            i += 1
    return {"pairs": i, "inprocess_p50_ms": pct(local, 50) * 1000, "http_p50_ms": pct(http, 50) * 1000}


# -- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, weights: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "FMPN_WEIGHTS": str(weights),
        "FMPN_DEVICE": args.device,
        "FMPN_PRECISION": args.precision,
        "FMPN_COMPILE": args.compile,
        "FMPN_TORCH_THREADS": str(args.threads),
        "FMPN_MAX_BATCH": str(args.max_batch),
        "FMPN_BATCH_WAIT_MS": str(args.batch_wait_ms),
        "FMPN_QUEUE_SIZE": str(max(64, 4 * args.max_batch)),
        "FMPN_RATE_LIMIT_PER_MINUTE": "0",
        "FMPN_API_KEY": "",
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("the server exited during start-up")
            try:
                r = await client.get("/readyz")
                if r.status_code == 200:
                    return r.json()
                if r.json().get("state") == "failed":
                    raise SystemExit(f"the server could not load the model: {r.json()['reason']}")
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not become ready")


def scrape(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def run_level(url: str, photos: list[tuple[str, bytes]], clients: int, duration: float, mask: bool) -> dict:
    """``clients`` closed-loop clients; responses completing inside the window after a warm-up count."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    params = {"mask": "true" if mask else "false"}
    warmup = min(2.0, duration / 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = (await client.get("/metrics")).text
        latencies: list[float] = []
        faces = 0
        errors: dict[int, int] = {}
        begin = time.perf_counter() + warmup
        end = begin + duration

        async def worker(k: int) -> None:
            nonlocal faces
            i = k * 7  # clients start on different photos
            while time.perf_counter() < end:
                _, data = photos[i % len(photos)]
                i += 1
                t0 = time.perf_counter()
                r = await client.post(
                    "/v1/predictions", content=data, params=params, headers={"Content-Type": "image/jpeg"}
                )
                body = r.json()
                t1 = time.perf_counter()
                if not begin <= t1 <= end:
                    continue
                if r.status_code == 200:
                    latencies.append(t1 - t0)
                    faces += len(body["faces"])
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        await asyncio.gather(*(worker(k) for k in range(clients)))
        after = (await client.get("/metrics")).text
    batches = scrape(after, "fmpn_batch_size_images_count") - scrape(before, "fmpn_batch_size_images_count")
    images = scrape(after, "fmpn_batch_size_images_sum") - scrape(before, "fmpn_batch_size_images_sum")
    return {
        "clients": clients,
        "requests": len(latencies),
        "req_per_s": len(latencies) / duration,
        "faces_per_s": faces / duration,
        "p50_ms": pct(latencies, 50) * 1000,
        "p95_ms": pct(latencies, 95) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "mean_batch": images / batches if batches else float("nan"),
        "errors": errors,
    }


def main() -> int:
    args = parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    photos = load_photos(args.photos, (w, h))
    weights = args.weights
    note = ""
    if args.random_init or not weights.is_file():
        if not args.random_init:
            print(f"note: {weights} not found; using a randomly initialised CPU-profile model", file=sys.stderr)
        weights = random_checkpoint()
        note = " (random init)"
    levels = [int(v) for v in args.levels.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, weights, port)
    try:
        ready = asyncio.run(wait_ready(url, proc))
        print(f"server ready: {ready['model']}{note}; {len(photos)} photos at {w}x{h}; torch threads {args.threads}")
        predictor, images = make_predictor(args, weights, photos)
        before = in_process(args, predictor, images, photos)
        report_in_process("before the sweep", before, args.max_batch)
        pair = paired(url, predictor, images, photos, args.inprocess_seconds * 2, args.mask)
        print(
            f"paired, 1 client (in-process and HTTP alternating on the same photo, {pair['pairs']} pairs): "
            f"in-process p50 {pair['inprocess_p50_ms']:.1f} ms, HTTP p50 {pair['http_p50_ms']:.1f} ms"
        )
        rows = []
        print(
            f"\n{'clients':>7} {'requests':>8} {'req/s':>7} {'faces/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'batch':>6}  errors"
        )
        for clients in levels:
            row = asyncio.run(run_level(url, photos, clients, args.duration, args.mask))
            rows.append(row)
            print(
                f"{row['clients']:>7} {row['requests']:>8} {row['req_per_s']:>7.2f} {row['faces_per_s']:>8.2f} "
                f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['mean_batch']:>6.2f}  "
                f"{row['errors'] or '-'}"
            )
        # Measured again afterwards: on a shared machine the load changes; the ratios use the mean.
        after = in_process(args, predictor, images, photos)
        report_in_process("after the sweep", after, args.max_batch)
        ref = {k: (before[k] + after[k]) / 2 for k in ("single_p50_ms", "batch_faces_per_s", "batch_images_per_s")}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    by = {r["clients"]: r for r in rows}
    summary = {"in_process": {"before": before, "after": after, "mean": ref}, "paired": pair, "levels": rows}
    print(
        f"\nin-process (mean of both): p50 {ref['single_p50_ms']:.1f} ms/image, "
        f"batch of {args.max_batch}: {ref['batch_faces_per_s']:.2f} faces/s"
    )
    ratio = pair["http_p50_ms"] / pair["inprocess_p50_ms"]
    summary["latency_ratio_paired"] = ratio
    print(
        f"HTTP p50 / in-process p50, paired at 1 client: {ratio:.3f}  "
        f"(goal <= 1.25: {'met' if ratio <= 1.25 else 'NOT met'})"
    )
    if 1 in by:
        ratio = by[1]["p50_ms"] / ref["single_p50_ms"]
        summary["latency_ratio_sweep"] = ratio
        print(f"HTTP p50 @1 client (sweep) / in-process p50 (separate windows): {ratio:.3f}")
    top = max(levels)
    if top in by:
        ratio = by[top]["faces_per_s"] / ref["batch_faces_per_s"]
        summary["throughput_ratio"] = ratio
        print(
            f"faces/s @{top} clients / in-process batch faces/s: {ratio:.3f}  "
            f"(goal >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'})"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
