"""``fmpn export CHECKPOINT --format onnx|torchscript --out PATH``: a checkpoint as an ONNX or TorchScript file."""

from __future__ import annotations

import argparse
import json

FORMATS = ("onnx", "torchscript")  # kept in step with training.export.FORMATS (not imported: torch is slow)
STORAGES = ("float16", "int8", "int4", "float32")  # and with fmpn.checkpoint.STORAGES


def register(subparsers: argparse._SubParsersAction) -> None:
    register_release(subparsers)
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description=(
            "Export a checkpoint (eval mode) to ONNX (dynamic batch axis, outputs 'logits' and 'mask') or "
            "TorchScript (torch.jit.trace). The class names, profile and image size are embedded in the file."
        ),
    )
    parser.add_argument("checkpoint", help="checkpoint file (.safetensors)")
    parser.add_argument(
        "--format", dest="fmt", required=True, help=f"export format: {' or '.join(FORMATS)}", metavar="FORMAT"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="output file (default: beside the checkpoint, .onnx or .torchscript.pt)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, metavar="N", help="batch of the traced example input (default 1)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="run the exported file (onnxruntime / torch.jit.load) on random faces and print the max error",
    )
    parser.set_defaults(func=run)


def register_release(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("release", help="write released weights: float16, int8 or int4 storage, same metadata")
    p.add_argument(
        "checkpoint",
        nargs="+",
        help="a checkpoint; several (one profile and classes) are averaged weight by weight (a model soup)",
    )
    p.add_argument("--out", required=True, help="e.g. weights/fmpn-cpu-fer2013.safetensors")
    p.add_argument(
        "--storage",
        choices=STORAGES,
        default="float16",
        help="tensor storage (default float16); int8: weights in int8 with a float32 scale per output channel, "
        "half float16's size; int4: the large weight tensors in int4 (a float16 scale per 32 weights), the rest "
        "int8, 0.6x int8's size; the file is loaded into float32 either way",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="keep the checkpoints side by side in one file (probabilities averaged; profiles may differ, the input "
        "size may not) instead of averaging their weights",
    )
    p.add_argument(
        "--member",
        type=int,
        metavar="I",
        help="write the I-th model (from 0) of one ensemble file alone, e.g. to fine-tune from it (--init)",
    )
    p.add_argument(
        "--flip-average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="predictions average each face with its mirror image (default: as the source checkpoint)",
    )
    p.set_defaults(func=run_release)


def run_release(args: argparse.Namespace) -> int:
    from fmpn.checkpoint import file_sha256
    from training.release import release

    path = release(
        args.checkpoint,
        args.out,
        storage=args.storage,
        flip_average=args.flip_average,
        ensemble=args.ensemble,
        member=args.member,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(path)[:16]})")
    return 0


def run(args: argparse.Namespace) -> int:
    from training.export import check_format, export_checkpoint

    fmt = check_format(args.fmt)  # before loading anything: a bad format is a one-line error
    result = export_checkpoint(args.checkpoint, fmt, args.out, batch_size=args.batch_size, opset=args.opset)
    meta = result.metadata
    print(
        f"exported {args.checkpoint} -> {result.path} ({fmt}, {result.size_bytes / 1e6:.1f} MB): "
        f"profile {meta['profile']}, input (batch, 3, {meta['image_size']}, {meta['image_size']}), "
        f"classes {', '.join(json.loads(meta['classes']))}"
    )
    if args.verify:
        import torch

        from fmpn.checkpoint import load_checkpoint
        from training.export import max_errors

        model = load_checkpoint(args.checkpoint).build_model()
        size = int(meta["image_size"])
        for batch in (1, 8):
            rgb = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            err_logits, err_mask = max_errors(model, result.path, fmt, rgb)
            with torch.no_grad():
                scale = model(rgb)[0].abs().max().item()
            print(
                f"verify batch {batch}: max |logits - torch| = {err_logits:.2e} "
                f"({err_logits / max(scale, 1e-12):.1e} of max |logits| {scale:.3g}), "
                f"max |mask - torch| = {err_mask:.2e}"
            )
    return 0
