"""Accuracy through HTTP (not a test of the suite): every image of a labelled folder posted to the real server.

Starts ``uvicorn app.main:app`` on 127.0.0.1 in a subprocess (or uses ``--url``), then ``--clients`` clients post
every image of ``--data`` (``<class>/<image>``, the layout ``fmpn evaluate`` reads) once with ``detect=false`` (the
image is one face crop, classified whole) and once with detection (the photo path: MTCNN, alignment, the largest
face). Folders are matched to the model's classes by name as ``fmpn evaluate`` does (``happiness`` is ``happy``);
folders the model has no class for are left out. Prints, for each mode, the images right (the top label is the
folder's class), those without a face, images/s and p50/p95 latency. What ``fmpn evaluate`` and ``fmpn evaluate
--detect`` print for the same folder and weights are the figures a deployment should reproduce (float32: to the
image).

    python bench/bench_accuracy.py --data ../shared/data/fer2013/val --precision float32
    python bench/bench_accuracy.py --url http://gpu-host:8000 --data ../shared/data/fer2013/val --modes crop

Exits 1 when any request fails (anything but a 200).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Tally, add_server_args, resolve_weights, running_server  # noqa: E402
from bench_service import pct  # noqa: E402

from fmpn.data import folder_samples  # noqa: E402

MODES = {"crop": "false", "detect": "true"}  # mode -> the detect query value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_args(p)
    p.add_argument("--data", type=Path, required=True, help="labelled folder: <class>/<image>")
    p.add_argument("--url", help="a running service instead of starting one (its own weights and settings)")
    p.add_argument("--modes", default="crop,detect", help="crop (detect=false), detect, or both (default %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as failed")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def labelled_images(root: Path, classes: list[str]) -> list[tuple[Path, str]]:
    """(image, the model's class) for every image whose folder names one of ``classes``: the images and labels
    ``fmpn evaluate`` scores (``fmpn.data.folder_samples``)."""
    split = folder_samples(root, classes, check=False)
    if split.skipped_classes:
        print(f"left out (no such class in the model): {', '.join(split.skipped_classes)}")
    if not split.samples:
        raise SystemExit(f"no images under {root} in folders named after the classes {classes}")
    return [(s.path, classes[s.label]) for s in split.samples]


async def run_mode(url: str, images: list[tuple[Path, str]], detect: str, args: argparse.Namespace) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    tally = Tally()
    latencies: list[float] = []
    right = no_face = 0
    todo = iter(images)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:

        async def worker() -> None:
            nonlocal right, no_face
            for path, label in todo:
                headers = {"Content-Type": mimetypes.guess_type(path.name)[0] or "image/jpeg"}
                params = {"mask": "false", "detect": detect}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/predictions", content=path.read_bytes(), params=params, headers=headers)
                except httpx.HTTPError as exc:
                    tally.transport_error(exc)
                    continue
                latencies.append(time.perf_counter() - t0)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                if tally.record(r.status_code, body, r.headers) != "ok":
                    continue
                faces = body["faces"]
                if not faces:
                    no_face += 1
                elif faces[0]["label"] == label:
                    right += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        wall = time.perf_counter() - start
    return {
        "detect": detect,
        "images": len(images),
        "right": right,
        "accuracy": right / len(images),
        "no_face": no_face,
        "images_per_s": len(images) / wall,
        "p50_ms": pct(latencies, 50) * 1000,
        "p95_ms": pct(latencies, 95) * 1000,
        "failures": dict(tally.failures),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise SystemExit(f"--modes takes crop and/or detect, got {args.modes!r}")

    def measure(url: str) -> list[dict]:
        import httpx

        classes = httpx.get(f"{url}/v1/models", timeout=args.timeout).json()["models"][0]["classes"]
        images = labelled_images(args.data, classes)
        print(f"{len(images)} images of {args.data}, {args.clients} clients", flush=True)
        return [asyncio.run(run_mode(url, images, MODES[m], args)) for m in modes]

    if args.url:
        print(f"service {args.url}", flush=True)
        rows = measure(args.url.rstrip("/"))
    else:
        weights, note = resolve_weights(args)
        with running_server(args, weights) as (url, _proc, ready):
            print(
                f"server ready: {ready['model']}{note}; torch threads {args.threads}, precision {args.precision}",
                flush=True,
            )
            rows = measure(url)
    print(f"\n{'detect':>6} {'right':>12} {'accuracy':>8} {'no face':>7} {'img/s':>6} {'p50 ms':>7} {'p95 ms':>7}")
    for m, row in zip(modes, rows, strict=True):
        print(
            f"{row['detect']:>6} {row['right']:>5}/{row['images']:<6} {row['accuracy']:>8.2%} {row['no_face']:>7} "
            f"{row['images_per_s']:>6.1f} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f}   ({m})"
        )
    failed = {k: v for row in rows for k, v in row["failures"].items()}
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if failed:
        print(f"FAILED requests: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
