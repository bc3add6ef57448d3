"""``fmpn serve``: the HTTP service (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import sys
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

    from app import logs
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
        log_config=logs.uvicorn_config(settings.log_format),
        timeout_graceful_shutdown=10,
    )
    return 0
