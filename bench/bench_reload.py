"""A model reload (POST /v1/models:reload?force=true) while the service answers photos: how long it takes, and
whether photos are answered as fast after it as before (the new model is built in a thread that ends, so no second
OpenMP team is left competing with the inference thread).

Starts ``uvicorn app.main:app`` in a subprocess with an admin key, then: the p50 of ``--requests`` sequential
photos (the first portrait-*.jpg, ``mask=false``) twice, then per reload its time, the photos answered during it
and the p50 twice again. ``--compile on``: the model compiled ahead of time (``fmpn/aot.py``), its packages in a
folder of the bench's own (``TORCHINDUCTOR_CACHE_DIR``): a reload of the same file loads them again; with ``--cold``
the folder is emptied first, so that the reload compiles its batch shapes (in child processes) while photos are
answered.

    python bench/bench_reload.py --threads 2                  # uncompiled, three reloads
    python bench/bench_reload.py --threads 2 --compile on --reloads 1 --cold
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import add_server_args, resolve_weights, running_server

ADMIN_KEY = "bench-reload"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off", help="FMPN_COMPILE")
    p.add_argument("--reloads", type=int, default=3, help="forced reloads, one after the other")
    p.add_argument("--requests", type=int, default=20, help="sequential photos per p50")
    p.add_argument("--cold", action="store_true", help="delete the compiled packages before each reload")
    return p.parse_args()


def p50_ms(client: httpx.Client, photo: bytes, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/v1/predictions?mask=false&keep=false", content=photo, headers={"Content-Type": "image/jpeg"})
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
    return statistics.median(times) * 1000


def during(client: httpx.Client, photo: bytes, done: threading.Event, times: list[float]) -> None:
    """Photos one after the other until the reload answers: what clients see meanwhile."""
    while not done.is_set():
        t0 = time.perf_counter()
        client.post("/v1/predictions?mask=false&keep=false", content=photo, headers={"Content-Type": "image/jpeg"})
        times.append(time.perf_counter() - t0)


def main() -> int:
    args = parse_args()
    portraits = sorted(args.photos.glob("portrait-*.jpg"))
    if not portraits:
        raise SystemExit(f"no portrait-*.jpg photo in {args.photos} (set FMPN_DATA or pass --photos)")
    photo = portraits[0].read_bytes()  # as taken; the server detects on a copy at most 640 px a side
    weights, note = resolve_weights(args)
    cache = Path(tempfile.mkdtemp(prefix="fmpn-bench-compiled-"))
    env = {"FMPN_ADMIN_API_KEY": ADMIN_KEY, "FMPN_DETECT_MAX_SIDE": "640", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    try:
        return measure(args, photo, weights, note, env, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure(args: argparse.Namespace, photo: bytes, weights: Path, note: str, env: dict, cache: Path) -> int:
    t0 = time.perf_counter()
    with running_server(args, weights, env) as (url, _, ready):
        print(f"ready in {time.perf_counter() - t0:.1f} s (a cold start: an empty cache folder)")
        device = ready.get("model", {}).get("device")
        print(f"{weights.name}{note}: {device}, compile {args.compile}, {args.threads} torch threads")
        with httpx.Client(base_url=url, timeout=600) as client, httpx.Client(base_url=url, timeout=600) as side:
            first, second = p50_ms(client, photo, args.requests), p50_ms(client, photo, args.requests)
            print(f"before: p50 {first:.1f} / {second:.1f} ms")
            for k in range(args.reloads):
                if args.cold:  # the packages and inductor's kernels: all compiled again
                    shutil.rmtree(cache)
                    cache.mkdir()
                done, meanwhile = threading.Event(), []
                worker = threading.Thread(target=during, args=(side, photo, done, meanwhile))
                worker.start()
                r = client.post("/v1/models:reload?force=true", headers={"X-API-Key": ADMIN_KEY})
                done.set()
                worker.join()
                r.raise_for_status()
                seconds = r.json()["seconds"]
                answered = f"{len(meanwhile)} photos answered meanwhile"
                if meanwhile:
                    answered += f", p50 {statistics.median(meanwhile) * 1000:.1f} ms"
                first, second = p50_ms(client, photo, args.requests), p50_ms(client, photo, args.requests)
                print(f"reload {k + 1}: {seconds:.2f} s ({answered}); after: p50 {first:.1f} / {second:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
