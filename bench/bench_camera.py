"""The demo page's camera mode through the real server (not a test): one frame in flight at a time, sent as a
JPEG with ``?keep=false`` (the masks come inline), as the page sends it. What size to send a frame at: each photo
is rescaled to ``--sides`` px on its long side (the page sends 320-960, keeping the smallest face near 60 px),
frames are posted back to back, interleaved over the sizes so that the machine's noise falls on all alike;
p50/p95 round trip and the frames a second one camera gets, with the server's own detect/model split.

    python bench/bench_camera.py --threads 2
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_server_args, resolve_weights, running_server  # noqa: E402
from bench_service import pct  # noqa: E402

PHOTOS = {"one close face": "portrait-angelina_jolie.jpg", "six faces": "group-multiface.jpg"}


def frame(path: Path, side: int) -> bytes:
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    scale = side / max(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)  # the page's canvas.toBlob("image/jpeg", 0.85)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off", help="FMPN_COMPILE")
    p.add_argument("--sides", type=int, nargs="+", default=[1280, 960, 640, 480, 320], help="frame sizes, long side px")
    p.add_argument("--frames", type=int, default=20, help="frames per photo and size")
    args = p.parse_args()
    import httpx

    weights, note = resolve_weights(args)
    frames = {(what, side): frame(args.photos / name, side) for what, name in PHOTOS.items() for side in args.sides}
    times: dict[tuple[str, int], list[float]] = {k: [] for k in frames}
    split: dict[tuple[str, int], list[tuple[float, float, int]]] = {k: [] for k in frames}
    with running_server(args, weights) as (url, _proc, ready), httpx.Client(base_url=url, timeout=120) as client:
        name = ready.get("model", {}).get("name", "?")
        print(f"model {name}{note}, {args.threads} torch threads, compile {args.compile}")

        def post(data: bytes) -> dict:
            r = client.post(
                "/v1/predictions",
                content=data,
                params={"keep": "false"},  # masks included, as the page asks
                headers={"Content-Type": "image/jpeg"},
            )
            r.raise_for_status()
            return r.json()

        for data in frames.values():  # warm up every size once
            post(data)
        for _ in range(args.frames):
            for key, data in frames.items():
                t0 = time.perf_counter()
                body = post(data)
                times[key].append((time.perf_counter() - t0) * 1000)
                t = body["timings_ms"]
                split[key].append((t["detect"], t["model"], len(body["faces"])))
    print(f"{'photo':<16} {'side':>5} {'KiB':>5} {'faces':>5} {'p50 ms':>7} {'p95 ms':>7} {'frames/s':>8}", end="")
    print("  detect / model ms")
    for (what, side), ms in times.items():
        det = pct([d for d, _, _ in split[(what, side)]], 50)
        mod = pct([m for _, m, _ in split[(what, side)]], 50)
        faces = split[(what, side)][-1][2]
        kib = len(frames[(what, side)]) / 1024
        print(
            f"{what:<16} {side:>5} {kib:>5.0f} {faces:>5} {pct(ms, 50):>7.0f} {pct(ms, 95):>7.0f} "
            f"{1000 / pct(ms, 50):>8.1f}  {det:.0f} / {mod:.0f}"
        )


if __name__ == "__main__":
    main()
