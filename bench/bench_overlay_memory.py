"""Peak memory of the server while ``--gets`` clients fetch the overlay of one 39-megapixel photo at once: the
service renders two overlays at a time, so the peak stays bounded however many GETs arrive together.

Starts ``uvicorn app.main:app`` in a subprocess (images up to 50 MB and 50 megapixels), posts a portrait enlarged
to 7000 x 5600, then sends the GETs together and prints the server's peak resident memory before
them and after (Linux /proc VmHWM).

    python bench/bench_overlay_memory.py --threads 1
"""

from __future__ import annotations

import argparse
import io
import threading

import httpx
from _common import add_server_args, resolve_weights, rss_mb, running_server
from PIL import Image, ImageOps

SIZE = (7000, 5600)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off", help="FMPN_COMPILE")
    p.add_argument("--gets", type=int, default=8, help="overlay GETs sent at once")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    portraits = sorted(args.photos.glob("portrait-*.jpg"))
    if not portraits:
        raise SystemExit(f"no portrait-*.jpg photo in {args.photos} (set FMPN_DATA or pass --photos)")
    buf = io.BytesIO()
    ImageOps.exif_transpose(Image.open(portraits[0])).convert("RGB").resize(SIZE).save(buf, "JPEG", quality=85)
    weights, note = resolve_weights(args)
    env = {"FMPN_MAX_IMAGE_BYTES": "50000000", "FMPN_MAX_PIXELS": "50000000"}
    with running_server(args, weights, env) as (url, proc, _):
        with httpx.Client(base_url=url, timeout=600) as client:
            jpeg = {"Content-Type": "image/jpeg"}
            r = client.post("/v1/predictions?mask=false", content=buf.getvalue(), headers=jpeg)
            r.raise_for_status()
            overlay = r.json()["overlay_url"]
            before, statuses = rss_mb(proc.pid, "VmHWM"), []

            def get() -> None:
                with httpx.Client(base_url=url, timeout=600) as own:
                    statuses.append(own.get(overlay).status_code)

            threads = [threading.Thread(target=get) for _ in range(args.gets)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        peak = rss_mb(proc.pid, "VmHWM")
    print(f"{weights.name}{note}: a {SIZE[0]} x {SIZE[1]} photo ({len(buf.getvalue()) / 1e6:.1f} MB JPEG)")
    print(f"{args.gets} overlay GETs at once, statuses {sorted(statuses)}")
    print(f"peak resident memory: {before:.0f} MiB before the GETs (the upload and its analysis), {peak:.0f} MiB after")
    return 0 if statuses == [200] * args.gets else 1


if __name__ == "__main__":
    raise SystemExit(main())
