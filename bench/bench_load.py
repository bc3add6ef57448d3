"""Load test (not a test of the suite): many concurrent clients against the real server for a fixed time.

Starts ``uvicorn app.main:app`` on 127.0.0.1 in a subprocess (settings from FMPN_* variables), waits for /readyz,
then ``--clients`` closed-loop clients (default 16) post the photos of ``../shared/data/photos`` (resized to 640x480,
JPEG, in memory, as bench_service.py does) for ``--duration`` seconds (default 60). Every answer is counted by
status and error code. The only errors allowed are the service's deliberate backpressure (429 ``rate_limited``,
503 ``queue_full`` / ``not_ready`` with Retry-After; the client then waits Retry-After, at most 2 s); any other
status, a malformed 200, or a transport error makes the exit code 1. Prints p50/p95/p99 latency, req/s, faces/s,
the mean model batch and the status counts.

    python bench/bench_load.py                               # 16 clients, 60 s, the released weights
    python bench/bench_load.py --random-init --duration 10 --clients 8

Without the default weights (or with ``--random-init``) a randomly initialised CPU-profile model is served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Tally, add_server_args, resolve_weights, running_server  # noqa: E402
from bench_service import load_photos, pct, scrape  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default %(default)s)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the measured window")
    p.add_argument("--size", default="640x480", help="photos are resized to this (WxH)")
    p.add_argument("--mask", action=argparse.BooleanOptionalAction, default=True, help="ask for masks")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as failed")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


async def run_load(url: str, photos: list[tuple[str, bytes]], args: argparse.Namespace) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    params = {"mask": "true" if args.mask else "false"}
    tally = Tally()
    latencies: list[float] = []
    faces = 0
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        before = (await client.get("/metrics")).text
        begin = time.perf_counter() + args.warmup
        end = begin + args.duration

        async def worker(k: int) -> None:
            nonlocal faces
            i = k * 7  # clients start on different photos
            while time.perf_counter() < end:
                _, data = photos[i % len(photos)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/predictions", content=data, params=params, headers={"Content-Type": "image/jpeg"}
                    )
                except httpx.HTTPError as exc:  # connection refused or reset, timeout
                    tally.transport_error(exc)
                    continue
                try:
                    body = r.json()
                except ValueError:
                    body = r.text[:300]  # not JSON: a failure whatever the status
                t1 = time.perf_counter()
                kind = tally.record(r.status_code, body, r.headers)
                if kind == "backpressure":
                    await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))
                    continue
                if kind != "ok":
                    continue
                if not isinstance(body, dict) or not isinstance(body.get("faces"), list) or not body.get("id"):
                    tally.failed("200 malformed", json.dumps(body)[:300])
                    continue
                if begin <= t1 <= end:
                    latencies.append(t1 - t0)
                    faces += len(body["faces"])

        await asyncio.gather(*(worker(k) for k in range(args.clients)))
        after = (await client.get("/metrics")).text
    batches = scrape(after, "fmpn_batch_size_images_count") - scrape(before, "fmpn_batch_size_images_count")
    images = scrape(after, "fmpn_batch_size_images_sum") - scrape(before, "fmpn_batch_size_images_sum")
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "requests_measured": len(latencies),
        "requests_total": tally.total,
        "req_per_s": len(latencies) / args.duration,
        "faces_per_s": faces / args.duration,
        "p50_ms": pct(latencies, 50) * 1000,
        "p95_ms": pct(latencies, 95) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "mean_batch": images / batches if batches else float("nan"),
        "status_counts": dict(tally.counts),
        "failures": dict(tally.failures),
        "_tally": tally,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    photos = load_photos(args.photos, (w, h))
    weights, note = resolve_weights(args)
    with running_server(args, weights) as (url, _proc, ready):
        print(
            f"server ready: {ready['model']}{note}\n{len(photos)} photos at {w}x{h}; {args.clients} clients for "
            f"{args.duration:g} s (+{args.warmup:g} s warm-up, counted but not timed); server torch threads "
            f"{args.threads}",
            flush=True,
        )
        row = asyncio.run(run_load(url, photos, args))
    tally: Tally = row.pop("_tally")
    print(
        f"\n{'clients':>7} {'requests':>8} {'req/s':>7} {'faces/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'batch':>6}\n{row['clients']:>7} {row['requests_measured']:>8} {row['req_per_s']:>7.2f} "
        f"{row['faces_per_s']:>8.2f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} "
        f"{row['mean_batch']:>6.2f}"
    )
    print(f"status counts ({tally.total} answers, warm-up included): {tally.summary()}")
    ok, verdict = tally.verdict()
    if ok and row["requests_measured"] == 0:
        ok, verdict = False, "FAILED: no successful prediction in the measured window"
    print(verdict)
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
