"""``fmpn evaluate CHECKPOINT [CHECKPOINT ...] --data ...``: accuracy, per-class recall, confusion matrix.

Several checkpoints are scored as an ensemble: their class probabilities averaged per face. ``--detect``
scores the service's own path instead (detector + alignment on whole images), since a model that is
right on the dataset's crops can still be wrong on the crops the service makes. Without it, each image is
one face crop, exactly as the service classifies an image posted with ``detect=false``.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint (or an ensemble of several) on a dataset")
    p.add_argument("checkpoints", nargs="+", metavar="checkpoint", help="several: their probabilities averaged")
    p.add_argument("--layout", choices=["folder", "ckplus48", "fmpn"], default="folder")
    p.add_argument("--data", required=True, help="dataset root (folder layout: root/<class>/<img>)")
    p.add_argument("--fold", type=int, help="test fold (ckplus48, fmpn)")
    p.add_argument("--dataset", choices=["ckplus", "mmi", "affectnet"], default="ckplus")
    p.add_argument("--images", help="image folder for the fmpn layout")
    p.add_argument("--split", choices=["train", "test"], default="test", help="ckplus48 / fmpn: which side of the fold")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--flip-average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each face with its mirror image (default: as the checkpoint says, like the service)",
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="float32 (default: the model card's figures) or bf16 autocast (the service's default on CPUs with bf16)",
    )
    p.add_argument(
        "--detect",
        action="store_true",
        help="the service's photo path: find each image's face (MTCNN) and align it, instead of resizing the image "
        "(the service's detect=false path); images with no face found count as wrong (one checkpoint)",
    )
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from fmpn.data import ckplus48_samples, fmpn_samples, folder_samples
    from training.evaluate import detect_probabilities, ensemble_probabilities, extends, load_ensemble, remap, score

    ckpts = load_ensemble(args.checkpoints)
    if args.layout == "folder":
        split = folder_samples(args.data)
    elif args.layout == "ckplus48":
        split = ckplus48_samples(args.data, _fold(args), args.split)
    else:
        name = "_ids.csv" if args.dataset == "affectnet" else f"_ids_{_fold(args)}.csv"
        split = fmpn_samples(args.data, args.split + name, args.dataset, args.images)
    if extends(ckpts[0].classes, split.classes):  # scored on the dataset's classes, as fmpn cv scores its folds
        skipped, dropped = list(split.skipped_classes), 0
    else:
        split, skipped, dropped = remap(split, ckpts[0].classes)
    device = torch.device(args.device)
    found = None
    if args.detect:
        if len(ckpts) > 1:
            raise ValueError(f"--detect scores one checkpoint, got {len(ckpts)}")
        probs, labels, found = detect_probabilities(
            args.checkpoints[0], split, device, args.precision, args.flip_average
        )
        if probs.shape[1] > len(split.classes):  # the softmax of the first logits: the others' share taken out
            probs = probs[:, : len(split.classes)]
            probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
    else:
        probs, labels = ensemble_probabilities(
            ckpts, split, device, args.batch_size, args.flip_average, amp=args.precision == "bfloat16"
        )
    result = score(probs, labels, list(split.classes), skipped, dropped, found)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0


def _fold(args: argparse.Namespace) -> int:
    if args.fold is None:
        raise ValueError(f"--layout {args.layout} needs --fold")
    return args.fold
