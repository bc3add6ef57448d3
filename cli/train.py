"""``fmpn train stage1|stage2`` and ``fmpn cv``."""

from __future__ import annotations

import argparse
import logging


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--layout",
        choices=["folder", "ckplus48", "fmpn"],
        default="folder",
        help="folder: root/<class>/<img> (FER2013); ckplus48: CK+48 with its fold column; "
        "fmpn: the original layout (split CSVs + labels)",
    )
    g.add_argument("--data", required=True, help="dataset root")
    g.add_argument("--val", help="validation root (folder layout), e.g. fer2013/val")
    g.add_argument("--fold", type=int, help="test fold 0-9 (CK+, MMI)")
    g.add_argument("--dataset", choices=["ckplus", "mmi", "affectnet"], default="ckplus", help="fmpn layout only")
    g.add_argument("--images", help="image folder for the fmpn layout, if not <data>/imgs (searched by file name)")
    g.add_argument("--masks", help="folder of <class>.png masks; {fold} is replaced by the fold")
    g.add_argument("--mask-classes", help="comma-separated class names of the mask files (default: CK+ order)")
    g.add_argument(
        "--neutral",
        help="ckplus48: folder from `fmpn masks neutral-faces`; its CK+ neutral frames of subjects outside the test"
        " fold train an extra class 'neutral', the test counts the seven CK+ classes",
    )
    g.add_argument("--limit", type=int, help="use only N training images (class-balanced), for smoke runs")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cpu", help="model profile: cpu, cpu-fine or paper (fmpn/profiles.py)")
    p.add_argument("--out", required=True, help="run folder (resumes from its last.pt)")
    p.add_argument("--niter", type=int, help="epochs at full learning rate (default: the profile's)")
    p.add_argument("--niter-decay", type=int, help="epochs of linear decay (default: the profile's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: the profile's); stage 2 and cv: the CN's and PFN's, the FMG keeps the profile's"
        " fmg_lr; CK+ fine-tunes from a FER2013 model did best at 3e-4 (docs/results.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--max-steps", type=int, help="stop each epoch after N steps (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--balance",
        type=float,
        default=0.0,
        help="class-balanced sampling: 0 natural frequencies (default), 1 every class equally often, 0.5 between",
    )
    p.add_argument(
        "--logit-adjust",
        type=float,
        default=0.0,
        metavar="TAU",
        help="logit-adjusted loss for skewed classes: CE on logits + TAU * log(training class frequency); "
        "0 to 2: 1 aims the plain argmax at the mean per-class recall, 0 plain CE (default)",
    )
    p.add_argument(
        "--lambda-mask",
        type=float,
        metavar="W",
        help="stage 2: weight of the mask loss beside the class loss (the original's --lambda_resface; default: the "
        "profile's, 0.1); a higher weight keeps the FMG's masks class-specific through stage 2",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="stage 2: train on blends of two faces (image, class and mask targets alike), blend weight "
        "~ Beta(ALPHA, ALPHA); 0 off (default), 0.2-0.4 usual",
    )
    p.add_argument(
        "--augment",
        choices=["crop", "strong"],
        default="crop",
        help="crop: the original five-crop + flip (default); strong: + rotation, scale, shift, random erasing",
    )
    p.add_argument("--stop-after", type=int, help="end after N epochs; running the same command again resumes")


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train one stage")
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    s1 = stages.add_parser("stage1", help="the mask generator alone (MSE on the class masks)")
    s2 = stages.add_parser("stage2", help="generator + fusion + classifier jointly (CE + lambda * MSE)")
    for p in (s1, s2):
        add_data_args(p)
        add_train_args(p)
    s2.add_argument("--init", help="checkpoint to start from (the stage-1 model, or a pretrained model)")
    s2.add_argument(
        "--init-parts", default="generator", help="sub-nets to take from --init: generator,fusion,classifier"
    )
    s2.add_argument("--ablation", action="store_true", help="the classifier alone, without the motion prior")
    s2.add_argument(
        "--soft-labels", metavar="FILE", help="teacher class probabilities per training image (`fmpn soft-labels`)"
    )
    s2.add_argument(
        "--soft-weight",
        type=float,
        metavar="W",
        help="with --soft-labels: class target = (1 - W) * label + W * teacher probabilities (default 0.5)",
    )
    s2.add_argument(
        "--select",
        choices=["last", "val"],
        default="last",
        help="keep the final epoch (the paper) or the best validation accuracy",
    )
    s1.set_defaults(func=cmd_train)
    s2.set_defaults(func=cmd_train)

    cv = sub.add_parser("cv", help="10-fold cross-validation: both stages per fold, per-fold table and mean")
    add_data_args(cv)
    add_train_args(cv)
    cv.add_argument("--folds", default="0-9", help="e.g. 0-9 or 0,3,5")
    cv.add_argument("--ablation", action="store_true", help="the classifier alone (stage 2 only, no prior)")
    cv.add_argument(
        "--pretrained",
        help="start each fold from this checkpoint (e.g. FER2013): stage 2 only, or with --stage1-niter first stage 1 "
        "(the FMG alone fitted to the fold's masks); {fold} is replaced by the fold, to go on from each fold's model "
        "of an earlier run",
    )
    cv.add_argument("--stage1-niter", type=int, help="stage-1 epochs at full lr (default: the profile's)")
    cv.add_argument("--stage1-niter-decay", type=int)
    cv.set_defaults(func=cmd_cv)

    soft = sub.add_parser(
        "soft-labels", help="teacher models' class probabilities on every training image, for --soft-labels"
    )
    soft.add_argument("teachers", nargs="+", metavar="checkpoint", help="several: their probabilities averaged")
    soft.add_argument("--data", required=True, help="training images (folder layout: root/<class>/<img>)")
    soft.add_argument("--out", required=True, help="file to write (.safetensors)")
    soft.add_argument("--device", default="cpu")
    soft.add_argument("--amp", action="store_true", help="bf16 autocast")
    soft.set_defaults(func=cmd_soft_labels)

    ens = sub.add_parser(
        "cv-ensemble", help="per-fold table of several finished cv runs together (class probabilities averaged)"
    )
    ens.add_argument("runs", nargs="+", help="cv run folders (each with fold_<k>/stage2/model.safetensors)")
    ens.add_argument("--folds", default="0-9", help="e.g. 0-9 or 0,3,5")
    ens.add_argument("--device", default="cpu", help="cpu or cuda")
    ens.set_defaults(func=cmd_cv_ensemble)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _configs(args: argparse.Namespace, stage: int):
    from training.config import DataConfig, TrainConfig

    data = DataConfig(
        layout=args.layout,
        root=args.data,
        val_root=args.val,
        fold=args.fold,
        dataset=args.dataset,
        images=args.images,
        masks=args.masks,
        mask_classes=args.mask_classes.split(",") if args.mask_classes else None,
        neutral=args.neutral,
        limit=args.limit,
    )
    return TrainConfig(
        stage=stage,
        data=data,
        out=args.out,
        profile=args.profile,
        niter=args.niter,
        niter_decay=args.niter_decay,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        max_steps=args.max_steps,
        stop_after=args.stop_after,
        balance=args.balance,
        logit_adjust=args.logit_adjust,
        lambda_mask=args.lambda_mask,
        mixup=args.mixup,
        augment=args.augment,
        progress=not args.no_progress,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from training.loop import train

    _configure_logging()
    cfg = _configs(args, 1 if args.stage == "stage1" else 2)
    if cfg.stage == 2:
        cfg.init, cfg.ablation, cfg.select = args.init, args.ablation, args.select
        if args.soft_weight is not None and args.soft_labels is None:
            raise ValueError("--soft-weight weighs the teacher targets of --soft-labels FILE: pass both or neither")
        cfg.soft_labels = args.soft_labels
        if args.soft_weight is not None:
            cfg.soft_weight = args.soft_weight
        cfg.init_parts = args.init_parts.split(",")
    result = train(cfg)
    print(f"model written to {result.checkpoint}")
    return 0


def parse_folds(text: str) -> list[int]:
    folds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            folds += range(int(a), int(b) + 1)
        else:
            folds.append(int(part))
    return folds


def cmd_cv(args: argparse.Namespace) -> int:
    import copy

    from training.cv import run_cv

    _configure_logging()
    if args.fold is not None:
        raise ValueError(f"fmpn cv runs the folds --folds names (e.g. --folds {args.fold}); --fold is fmpn train's")
    asked_stage1 = args.stage1_niter is not None or args.stage1_niter_decay is not None
    if args.ablation and asked_stage1:
        raise ValueError("--ablation trains the classifier alone: it has no stage 1 (drop --stage1-niter/-decay)")
    stage2 = _configs(args, 2)
    stage2.ablation = args.ablation
    stage1 = None
    if args.pretrained:
        stage2.init, stage2.init_parts = args.pretrained, ["generator", "fusion", "classifier"]
    if not args.ablation and (not args.pretrained or asked_stage1):
        # From a pretrained model, stage 1 runs only when asked: it fits the pretrained FMG to the fold's masks
        # (the model's other nets ride along unchanged) before stage 2 goes on from the result.
        stage1 = copy.deepcopy(stage2)
        stage1.stage, stage1.niter, stage1.niter_decay = 1, args.stage1_niter, args.stage1_niter_decay
        stage1.lr = stage1.lambda_mask = None  # stage 1 keeps its profile's rate and has no class loss to weigh against
    folds = parse_folds(args.folds)
    results = run_cv(stage1, stage2, folds, args.out)
    if results:
        _print_table(results)
    if len(results) < len(folds):  # --stop-after paused a fold
        print(f"{len(results)} of {len(folds)} folds finished; run the same command again to go on")
    return 0


def _print_table(results: list[dict]) -> None:
    from training.cv import format_pooled, format_table, mean_accuracy, mean_mirrored

    print(format_table(results))
    print()
    print(format_pooled(results))
    print()
    print(f"mean of folds: {mean_accuracy(results):.4f}")
    mirrored = mean_mirrored(results)
    if mirrored is not None:
        print(f"mean of folds, mirrored (faces and mirror images averaged): {mirrored:.4f}")


def cmd_cv_ensemble(args: argparse.Namespace) -> int:
    from training.cv import ensemble_fold, format_wrong

    results = [ensemble_fold(args.runs, fold, args.device) for fold in parse_folds(args.folds)]
    _print_table(results)
    print()
    print(format_wrong(results))
    return 0


def cmd_soft_labels(args: argparse.Namespace) -> int:
    import torch

    from fmpn.data import folder_samples
    from training.distill import write_soft_labels
    from training.evaluate import load_ensemble, remap

    teachers = load_ensemble(args.teachers)
    split, skipped, _ = remap(folder_samples(args.data), teachers[0].classes)
    if skipped:
        raise ValueError(f"the teachers know no class {skipped} of {args.data}: soft labels need every image")
    out = write_soft_labels(teachers, args.teachers, split, args.data, args.out, torch.device(args.device), args.amp)
    print(f"wrote {out}: {len(split.samples)} images x {len(split.classes)} classes, {len(teachers)} teacher(s)")
    return 0
