"""Soak test (not a test of the suite): many requests against one server process; its memory must stay flat.

Starts ``uvicorn app.main:app`` on 127.0.0.1 in a subprocess, cuts face crops out of the photos of
``../shared/data/photos`` (the server finds the faces; each crop is a square around one face, resized to
``--crop-size`` px, default 192: small real faces, so 10,000 requests take minutes on 2 CPU cores), then
``--clients`` closed-loop clients (default 4) post ``--requests`` of them (default 10,000). Every
``--get-every``-th result is fetched back (its overlay PNG, a face's mask PNG, and the JSON of a result posted
more than ``result_cap`` requests earlier, which the store must have evicted: 404), so the result store is
exercised up to its cap.

The server's RSS (/proc/PID/status VmRSS) is sampled after ``--warmup-requests`` and ``--samples`` times more, the
last at the end; the growth from the first sample to the last must stay under ``--max-growth-mb`` (50 MB). Any
error other than 429/503 backpressure, a stored-result count over the cap, or too much growth: exit code 1.

    python bench/bench_soak.py                                  # 10,000 requests, 4 clients
    python bench/bench_soak.py --random-init --requests 300     # a quick check of the script
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Tally, add_server_args, resolve_weights, rss_mb, running_server  # noqa: E402
from bench_service import pct, scrape  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--requests", type=int, default=10_000, help="prediction requests in all (default %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default %(default)s)")
    p.add_argument("--crop-size", type=int, default=192, help="face crops are resized to this square (px)")
    p.add_argument("--warmup-requests", type=int, default=300, help="requests before the first RSS sample")
    p.add_argument("--samples", type=int, default=8, help="RSS samples after the first one")
    p.add_argument("--get-every", type=int, default=10, help="fetch the overlay etc. of every N-th result")
    p.add_argument("--result-cap", type=int, default=256, help="the server's FMPN_RESULT_CAP")
    p.add_argument("--max-growth-mb", type=float, default=50.0, help="largest allowed RSS growth, MiB")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def _jpeg(im, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def face_crops(url: str, folder: Path, size: int) -> list[bytes]:
    """A square JPEG crop (``size`` px) around every face the server finds in the photos (upright, <= 1280 px)."""
    import httpx
    from PIL import Image, ImageOps

    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no .jpg photos in {folder} (set FMPN_DATA or --photos)")
    crops = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for path in paths:
            im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            im.thumbnail((1280, 1280), Image.Resampling.LANCZOS)
            r = client.post("/v1/predictions?mask=false", content=_jpeg(im), headers={"Content-Type": "image/jpeg"})
            r.raise_for_status()
            for face in r.json()["faces"]:
                b = face["box"]
                cx, cy = (b["x1"] + b["x2"]) / 2, (b["y1"] + b["y2"]) / 2
                half = 0.8 * max(b["x2"] - b["x1"], b["y2"] - b["y1"])  # the face and some of its surroundings
                box = tuple(round(v) for v in (cx - half, cy - half, cx + half, cy + half))
                crop = _jpeg(im.crop(box).resize((size, size), Image.Resampling.LANCZOS))
                check = client.post("/v1/predictions?mask=false", content=crop, headers={"Content-Type": "image/jpeg"})
                if check.status_code == 200 and check.json()["faces"]:  # keep the crops where a face is found
                    crops.append(crop)
    if not crops:
        raise SystemExit("no face found in the photos")
    return crops


async def soak(url: str, pid: int, crops: list[bytes], args: argparse.Namespace) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    posts, gets, evicted = Tally(), Tally(), Tally()
    warmup = min(args.warmup_requests, args.requests // 5)
    marks = [warmup + round((args.requests - warmup) * (k + 1) / args.samples) for k in range(args.samples)]
    samples: list[tuple[int, float, float]] = []  # (requests done, seconds, RSS MiB)
    ids: deque[str] = deque(maxlen=args.result_cap + 2 * args.clients + 20)
    latencies: list[float] = []
    state = {"started": 0, "done": 0, "ok": 0}
    t_start = time.perf_counter()

    def sample() -> None:
        samples.append((state["done"], time.perf_counter() - t_start, rss_mb(pid)))

    if warmup == 0:
        sample()
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:

        async def get(path: str, tally: Tally, expected: tuple[int, ...]) -> None:
            try:
                r = await client.get(path)
            except httpx.HTTPError as exc:
                tally.transport_error(exc)
                return
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
            tally.record(r.status_code, body, r.headers, expected=expected)

        async def worker(k: int) -> None:
            while state["started"] < args.requests:
                i = state["started"]
                state["started"] += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/predictions", content=crops[(i + k) % len(crops)], headers={"Content-Type": "image/jpeg"}
                    )
                except httpx.HTTPError as exc:
                    posts.transport_error(exc)
                    r = None
                if r is not None:
                    latencies.append(time.perf_counter() - t0)
                    try:
                        body = r.json()
                    except ValueError:
                        body = r.text[:300]
                    kind = posts.record(r.status_code, body, r.headers)
                    if kind == "backpressure":
                        await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))
                    elif kind == "ok":
                        if not isinstance(body, dict) or not body.get("id") or not body.get("faces"):
                            posts.failed("200 malformed or without a face", json.dumps(body)[:300])
                        else:
                            ids.append(body["id"])
                            state["ok"] += 1
                            if state["ok"] % args.get_every == 0:
                                await get(body["overlay_url"], gets, (200,))
                                await get(body["faces"][0]["mask_url"], gets, (200,))
                                if len(ids) == ids.maxlen:  # posted result_cap + a margin ago: evicted
                                    await get(f"/v1/predictions/{ids[0]}", evicted, (404,))
                state["done"] += 1
                if state["done"] == warmup or (marks and state["done"] >= marks[0]):
                    while marks and state["done"] >= marks[0]:
                        marks.pop(0)
                    sample()

        await asyncio.gather(*(worker(k) for k in range(args.clients)))
        elapsed = time.perf_counter() - t_start
        metrics = (await client.get("/metrics")).text
    return {
        "requests": args.requests,
        "clients": args.clients,
        "elapsed_s": elapsed,
        "req_per_s": args.requests / elapsed,
        "p50_ms": pct(latencies, 50) * 1000,
        "p95_ms": pct(latencies, 95) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "warmup_requests": warmup,
        "rss_samples": [{"requests": n, "seconds": round(s, 1), "rss_mib": round(m, 1)} for n, s, m in samples],
        "results_stored": scrape(metrics, "fmpn_results_stored"),
        "results_bytes": scrape(metrics, "fmpn_results_bytes"),
        "_tallies": (posts, gets, evicted),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    weights, note = resolve_weights(args)
    env = {"FMPN_RESULT_CAP": str(args.result_cap)}
    with running_server(args, weights, env) as (url, proc, ready):
        crops = face_crops(url, args.photos, args.crop_size)
        print(
            f"server ready: {ready['model']}{note}\nsmall images by default: {len(crops)} face crops of the photos at "
            f"{args.crop_size}x{args.crop_size} (--crop-size); {args.requests} requests by {args.clients} clients, "
            f"overlay + mask GETs every {args.get_every} results, result_cap {args.result_cap}; server torch "
            f"threads {args.threads}",
            flush=True,
        )
        row = asyncio.run(soak(url, proc.pid, crops, args))
    posts, gets, evicted = row.pop("_tallies")
    print(
        f"\n{row['requests']} requests in {row['elapsed_s']:.1f} s: {row['req_per_s']:.2f} req/s; latency p50 "
        f"{row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
    )
    print(f"POST statuses: {posts.summary()}")
    print(f"overlay/mask GET statuses: {gets.summary()}")
    print(f"GETs of results posted > result_cap earlier (must be 404, evicted): {evicted.summary()}")
    print(
        f"result store at the end: {row['results_stored']:.0f} results (cap {args.result_cap}), "
        f"{row['results_bytes'] / 2**20:.1f} MiB of photos"
    )
    print(f"\n{'requests':>8} {'seconds':>8} {'RSS MiB':>8}")
    for s in row["rss_samples"]:
        print(f"{s['requests']:>8} {s['seconds']:>8.1f} {s['rss_mib']:>8.1f}")
    first, last = row["rss_samples"][0], row["rss_samples"][-1]
    growth = last["rss_mib"] - first["rss_mib"]
    peak = max(s["rss_mib"] for s in row["rss_samples"])
    row["rss_growth_mib"] = round(growth, 1)
    print(
        f"RSS growth after warm-up ({first['requests']} requests) to the end: {growth:+.1f} MiB "
        f"(peak {peak:.1f} MiB; limit {args.max_growth_mb:g} MiB)"
    )
    problems = []
    for name, tally in (("POST", posts), ("GET", gets), ("evicted GET", evicted)):
        ok, verdict = tally.verdict()
        if not ok:
            problems.append(f"{name}: {verdict}")
    if growth >= args.max_growth_mb:
        problems.append(f"FAILED: RSS grew {growth:.1f} MiB, over the limit of {args.max_growth_mb:g} MiB")
    if row["results_stored"] > args.result_cap:
        problems.append(f"FAILED: {row['results_stored']:.0f} results stored, over the cap of {args.result_cap}")
    print("\n".join(problems) if problems else "OK: no errors, memory bounded")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
