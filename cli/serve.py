"""``fmpn serve`` (the HTTP service) and ``fmpn predict PHOTO...`` (the same JSON, offline, plus overlay PNGs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service (FastAPI + uvicorn)",
        description="Run the HTTP service. Every FMPN_* environment variable (see README, Service) applies; "
        "the options below override them.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--weights", help="checkpoint (default: FMPN_WEIGHTS or the checkout's released file)")
    serve.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    serve.add_argument("--max-batch", type=int, help="most images per model batch")
    serve.add_argument("--batch-wait-ms", type=float, help="longest wait to fill a batch")
    serve.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=run_serve)

    predict = sub.add_parser(
        "predict",
        help="predict the expressions in photos; print the service's JSON and write overlay PNGs",
        description="Runs the same pipeline as the service, in process. One photo prints the POST /v1/predictions "
        "JSON; several print the :batch JSON. Overlays go to OUT_DIR/<photo name>.overlay.png.",
    )
    predict.add_argument("photos", nargs="+", metavar="PHOTO", help="image files")
    predict.add_argument("--weights", help="checkpoint (default: FMPN_WEIGHTS or the checkout's released file)")
    predict.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    predict.add_argument("--out-dir", default=".", help="where overlay PNGs go (default: the current folder)")
    predict.add_argument("--no-overlay", action="store_true", help="write no overlay PNG")
    predict.add_argument("--no-mask", action="store_true", help="leave the base64 masks out of the JSON")
    predict.add_argument("--alpha", type=float, help="heat-map opacity in the overlay, 0..1")
    predict.add_argument("--max-faces", type=int, help="classify at most the N largest faces per photo")
    predict.add_argument(
        "--no-detect",
        action="store_true",
        help="each image is already one face crop (tight, upright, like FER2013's): classify it whole, no detector",
    )
    predict.add_argument("--indent", type=int, default=2, help="JSON indent (0: one line)")
    predict.set_defaults(func=run_predict)


def _settings(args: argparse.Namespace, **extra: Any):
    from app.settings import Settings

    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "weights", None):
        overrides["weights"] = args.weights
    if getattr(args, "device", None):
        overrides["device"] = args.device
    try:
        return Settings(**overrides)
    except Exception as exc:  # pydantic ValidationError: one line, no traceback
        raise ValueError(f"invalid settings: {exc}".replace("\n", " ")) from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from fmpn.checkpoint import load_checkpoint

    settings = _settings(
        args, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, torch_threads=args.torch_threads
    )
    # Fail fast with one clear line instead of starting a service that can never become ready.
    ckpt = load_checkpoint(settings.weights)
    ckpt.build_model()  # and that its tensors fit its profile (CheckpointError / ValueError otherwise)
    print(
        f"fmpn serve: {settings.weights} ({ckpt.profile_name}, {len(ckpt.classes)} classes) on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from app.render import encode_png, render_overlay
    from app.schemas import BatchItem, BatchResponse, ErrorDetail, prediction_response
    from app.service import build_predictor
    from fmpn.inference import ImageDecodeError, load_image_file

    # Uncompiled: a few photos never repay compiling the model (seconds per batch shape); the service does.
    settings = _settings(args, compile="off")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be within 0..1, got {args.alpha}")
    if args.max_faces is not None and args.max_faces < 1:
        raise ValueError(f"--max-faces must be at least 1, got {args.max_faces}")
    paths = [Path(p) for p in args.photos]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no such photo: {p}")
    predictor = build_predictor(settings)
    info = predictor.info()
    limit = args.max_faces or settings.max_faces
    alpha = settings.mask_alpha if args.alpha is None else args.alpha
    out_dir = Path(args.out_dir)
    items: list[BatchItem] = []
    for i, path in enumerate(paths):
        try:
            decoded = load_image_file(path, settings.max_pixels)
        except ImageDecodeError as exc:
            if len(paths) == 1:
                raise ValueError(f"{path}: {exc.message}") from None
            items.append(BatchItem(index=i, error=ErrorDetail(code=exc.code, message=f"{path}: {exc.message}")))
            continue
        timings: dict[str, float] = {}
        (prediction,) = predictor.predict([decoded.rgb], max_faces=limit, timings=timings, detect=not args.no_detect)
        response = prediction_response(
            None,
            prediction,
            info,
            include_mask=not args.no_mask,
            max_faces=limit,
            warnings=decoded.warnings,
            timings_ms={k: v * 1000 for k, v in timings.items() if k != "faces"},
        )
        if not args.no_overlay:
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / f"{path.stem}.overlay.png"
            target.write_bytes(encode_png(render_overlay(decoded.rgb, prediction, predictor.classes, alpha=alpha)))
            print(f"fmpn predict: {path}: {len(prediction.faces)} face(s), overlay {target}", file=sys.stderr)
        items.append(BatchItem(index=i, result=response))
    indent = args.indent or None
    if len(paths) == 1 and items[0].result is not None:
        print(items[0].result.model_dump_json(indent=indent))
    else:
        print(BatchResponse(results=items).model_dump_json(indent=indent))
    return 0 if all(item.result is not None for item in items) else 1
