"""``fmpn masks``: the crop template and the motion masks.

- ``fmpn masks template DATA_DIR [--limit N]``: mean MTCNN landmarks of a folder of face crops (JSON).
- ``fmpn masks generate --pairs DIR --splits DIR --out DIR [--size 70]``: masks from CK+ neutral/peak pairs.
- ``fmpn masks compare GENERATED_DIR ORIGINAL_DIR``: per-fold, per-class Pearson correlation.
- ``fmpn masks grid GENERATED_DIR ORIGINAL_DIR --out FIG.png [--fold 0]``: side-by-side figure.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("masks", help="crop template, motion masks and figures")
    sub = parser.add_subparsers(dest="masks_command", required=True, metavar="ACTION")
    register_figures(sub)

    t = sub.add_parser("template", help="measure the mean MTCNN 5-point landmarks of a folder of face crops")
    t.add_argument("data_dir", help="folder of face crops (searched recursively), e.g. ../shared/data/fer2013/train")
    t.add_argument("--limit", type=int, default=1000, help="random sample size (default 1000; 0 = all images)")
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--upsample", type=int, default=160, help="resize crops to this size before MTCNN (default 160)")
    t.add_argument("--min-score", type=float, default=0.95, help="MTCNN score a single face needs (default 0.95)")
    t.add_argument("--check-size", type=int, default=64, help="size of the self-alignment check (0 = skip)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.set_defaults(func=cmd_template)

    g = sub.add_parser("generate", help="motion masks from CK+ neutral/peak pairs, per fold: OUT/<fold>/<class>.png")
    g.add_argument("--pairs", required=True, help="the ckplus-neutral-peak folder (with index.csv)")
    g.add_argument("--splits", required=True, help="folder with train_ids_<k>.csv (fmpn-original/datasets/CKPlus)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--size", type=int, default=70, help="mask size in pixels (default 70, the originals')")
    g.add_argument("--folds", type=int, nargs="+", default=None, help="folds to make (default: all)")
    g.add_argument(
        "--template",
        default="fer2013",
        help="framing: fer2013 (default, the crops the model sees), ckplus48, original (the original masks')",
    )
    g.add_argument("--mode", default="five", help="registration: five (default) or stable (see training/masks.py)")
    g.add_argument("--work-size", type=int, default=128, help="registration size in pixels (default 128)")
    g.add_argument("--limit-per-class", type=int, default=None, help="first N training pairs per class (quick runs)")
    g.add_argument("--cache", default="auto", help="detection cache file (default OUT/detections.json; 'none' = off)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.set_defaults(func=cmd_generate)

    n = sub.add_parser(
        "neutral-faces", help="CK+ neutral frames in CK+48's framing (48 px), for `fmpn cv --neutral`: OUT/neutral/"
    )
    n.add_argument("--pairs", required=True, help="the ckplus-neutral-peak folder (with index.csv)")
    n.add_argument("--out", required=True, help="output folder")
    n.set_defaults(func=cmd_neutral_faces)

    reframe_help = (
        "warp the originals from the 'original' framing into this one before comparing; "
        "'auto' (default) = the template in GENERATED_DIR/report.json unless it is an original framing; 'none'"
    )
    c = sub.add_parser("compare", help="Pearson correlation of generated and original masks, per fold and class")
    c.add_argument("generated_dir")
    c.add_argument("original_dir")
    c.add_argument("--reframe", default="auto", help=reframe_help)
    c.add_argument("--json", action="store_true", help="print JSON instead of tables")
    c.set_defaults(func=cmd_compare)

    f = sub.add_parser("grid", help="figure: generated vs original masks of one fold")
    f.add_argument("generated_dir")
    f.add_argument("original_dir")
    f.add_argument("--out", required=True, help="PNG to write, e.g. docs/masks-grid.png")
    f.add_argument("--fold", type=int, default=0)
    f.add_argument("--reframe", default="auto", help=reframe_help + " (adds a row)")
    f.set_defaults(func=cmd_grid)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_template(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from training.template import measure_template, self_alignment_check

    m = measure_template(
        args.data_dir, limit=args.limit or None, seed=args.seed, upsample=args.upsample, min_score=args.min_score
    )
    out = m.to_dict()
    if args.check_size:
        out["alignment_check"] = self_alignment_check(m, size=args.check_size).to_dict()
    print(json.dumps(out, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from training.masks import generate_masks

    cache = None if args.cache.lower() == "none" else args.cache
    report = generate_masks(
        args.pairs,
        args.splits,
        args.out,
        size=args.size,
        folds=args.folds,
        template=args.template,
        work_size=args.work_size,
        mode=args.mode,
        limit_per_class=args.limit_per_class,
        cache_path=cache,
    )
    print(report.summary())
    print(f"wrote {args.out}/<fold>/<class>.png for folds {sorted(report.folds)} and {args.out}/report.json")
    return 0


def cmd_neutral_faces(args: argparse.Namespace) -> int:
    from training.neutral import write_neutral_faces

    count = write_neutral_faces(args.pairs, args.out)
    print(f"wrote {count} neutral faces to {args.out}/neutral/ and {args.out}/index.csv")
    return 0


def _reframe(option: str, generated_dir: str):
    """(original framing, generated framing) or None, from the --reframe option."""
    from training.masks import generated_template, resolve_template

    if option == "none":
        return None
    target = generated_template(generated_dir) if option == "auto" else option
    if target is None or (isinstance(target, str) and target.startswith("original")):
        return None
    resolve_template(target)  # a clear error for an unknown name
    return ("original", target)


def cmd_compare(args: argparse.Namespace) -> int:
    from training.masks import compare_masks, format_comparison

    reframe = _reframe(args.reframe, args.generated_dir)
    raw = compare_masks(args.generated_dir, args.original_dir)
    tables = {"raw": raw}
    if reframe:
        tables["reframed"] = compare_masks(args.generated_dir, args.original_dir, reframe=reframe)
    if args.json:
        print(json.dumps({k: {str(f): [round(v, 4) for v in row] for f, row in t.items()} for k, t in tables.items()}))
        return 0
    print(f"Pearson correlation, {args.generated_dir} vs {args.original_dir} (generated resized to the original):")
    print(format_comparison(raw))
    if reframe:
        name = reframe[1] if isinstance(reframe[1], str) else "the generated template"
        print(f"\nwith the originals warped from the 'original' framing into {name} (inside pixels only):")
        print(format_comparison(tables["reframed"]))
    sys.stdout.flush()
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from training.masks import mask_grid

    out = mask_grid(
        args.generated_dir,
        args.original_dir,
        args.out,
        fold=args.fold,
        reframe=_reframe(args.reframe, args.generated_dir),
    )
    print(f"wrote {out}")
    return 0


def register_figures(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "figures", help="docs figures: class masks, predicted masks on validation faces, mean predicted masks per class"
    )
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="class-folder validation set, e.g. ../shared/data/fer2013/val")
    p.add_argument("--masks", required=True, help="the CK+ mask folder the model was trained with")
    p.add_argument("--out", default="docs", help="output folder")
    p.add_argument("--per-class", type=int, default=4, help="faces a class in predicted-masks.png")
    p.add_argument("--limit", type=int, default=None, help="mean-masks.png: the first N faces a class (default: all)")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fmpn.checkpoint import load_checkpoint
    from fmpn.classes import CKPLUS
    from training.figures import class_masks_figure, fer2013_class_masks, mean_masks_figure, predicted_masks_figure

    classes = load_checkpoint(args.checkpoint).classes
    out = Path(args.out)
    masks = fer2013_class_masks(args.masks, classes, CKPLUS)
    a = class_masks_figure(masks, classes, out / "class-masks.png")
    b = predicted_masks_figure(args.checkpoint, args.data, out / "predicted-masks.png", args.per_class)
    c, stats = mean_masks_figure(args.checkpoint, args.data, masks, out / "mean-masks.png", limit_per_class=args.limit)
    print(stats.format())
    print(f"wrote {a}, {b} and {c}")
    return 0
