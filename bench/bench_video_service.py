"""Videos through the real server (not a test): what a video costs the photos sent beside it, and its memory.

Starts ``uvicorn app.main:app`` in a subprocess and, with the released weights:

1. photos alone: one client posts the photos (640x480, as bench_service.py) for ``--seconds``; p50/p95 latency;
2. photos beside videos: the same client again while a second one posts the multi-face clip to
   ``POST /v1/videos:predict`` (every 5th frame, 21 frames) back to back; photo p50/p95 and their ratio to (1),
   each video's wall time;
3. the server's RSS after the first video and after ``--videos`` more (each its own request): the growth.

    python bench/bench_video_service.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_server_args, resolve_weights, rss_mb, running_server  # noqa: E402
from bench_service import load_photos, pct  # noqa: E402


def photo_latencies(url: str, photos: list[tuple[str, bytes]], stop: threading.Event, out: list[float]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            r = client.post(
                "/v1/predictions",
                content=photos[i % len(photos)][1],
                params={"mask": "false"},
                headers={"Content-Type": "image/jpeg"},
            )
            assert r.status_code == 200, r.text
            out.append(time.perf_counter() - t0)
            i += 1


def post_video(url: str, clip: bytes) -> tuple[float, dict]:
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(
        f"{url}/v1/videos:predict", content=clip, params={"fps": 5}, headers={"Content-Type": "video/mp4"}, timeout=300
    )
    assert r.status_code == 200, r.text
    return time.perf_counter() - t0, r.json()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off", help="FMPN_COMPILE")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each photo phase")
    p.add_argument("--videos", type=int, default=10, help="videos posted after the first, for the RSS growth")
    args = p.parse_args()
    clip_path = args.photos / "clip-multiface.mp4"
    if not clip_path.is_file():
        print(f"bench_video_service: no clip at {clip_path}", file=sys.stderr)
        return 2
    clip = clip_path.read_bytes()
    photos = load_photos(args.photos, (640, 480))
    weights, note = resolve_weights(args)
    with running_server(args, weights) as (url, proc, ready):
        print(f"server: {ready.get('model', {}).get('name', weights.name)}{note}, {args.threads} threads")
        first, body = post_video(url, clip)  # warm-up, and the RSS baseline after one video
        print(
            f"first video: {first:.2f} s, {body['frames_analysed']} frames, "
            f"{sum(len(f['faces']) for f in body['frames'])} faces, {len(body['tracks'])} tracks"
        )
        alone: list[float] = []
        stop = threading.Event()
        worker = threading.Thread(target=photo_latencies, args=(url, photos, stop, alone))
        worker.start()
        time.sleep(args.seconds)
        stop.set()
        worker.join()
        beside: list[float] = []
        walls: list[float] = []
        stop = threading.Event()
        worker = threading.Thread(target=photo_latencies, args=(url, photos, stop, beside))
        worker.start()
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            walls.append(post_video(url, clip)[0])
        stop.set()
        worker.join()
        print(
            f"photos alone: {len(alone)} requests, p50 {pct(alone, 50) * 1000:.0f} ms, "
            f"p95 {pct(alone, 95) * 1000:.0f} ms"
        )
        print(
            f"photos beside videos: {len(beside)} requests, p50 {pct(beside, 50) * 1000:.0f} ms, "
            f"p95 {pct(beside, 95) * 1000:.0f} ms; p50 ratio {pct(beside, 50) / pct(alone, 50):.2f}x"
        )
        print(
            f"videos beside photos: {len(walls)}, p50 {pct(walls, 50):.2f} s each "
            f"({21 / pct(walls, 50):.2f} frames/s); alone {first:.2f} s"
        )
        before = rss_mb(proc.pid)
        for _ in range(args.videos):
            post_video(url, clip)
        after = rss_mb(proc.pid)
        print(
            f"RSS after the phases {before:.1f} MiB, after {args.videos} more videos {after:.1f} MiB "
            f"({after - before:+.1f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
