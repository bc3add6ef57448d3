"""``fmpn crops WEIGHTS --data DIR --out DIR``: a labelled image folder as the service crops it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "crops",
        help="write each image's face as the service crops it (MTCNN, alignment onto the checkpoint's template)",
    )
    p.add_argument("weights", help="checkpoint whose template and crop size to use")
    p.add_argument("--data", required=True, help="labelled images (folder layout: root/<class>/<img>)")
    p.add_argument("--out", required=True, help="folder to write, same layout; images without a face are listed")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_crops)


def cmd_crops(args: argparse.Namespace) -> int:
    from training.crops import write_service_crops

    print(write_service_crops(args.weights, args.data, args.out, args.device).format())
    return 0
