"""10-fold cross-validation: both stages per fold, then the fold's test accuracy; resumable per fold.

The paper's metric is the unweighted mean of the per-fold accuracies of the final-epoch models.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import torch

from fmpn.checkpoint import Checkpoint, load_checkpoint
from fmpn.data import SampleSet
from training.config import TrainConfig
from training.data import load_splits
from training.evaluate import EvalResult, ensemble_views, from_confusion, score
from training.loop import train

log = logging.getLogger(__name__)


def run_cv(stage1: TrainConfig | None, stage2: TrainConfig, folds: list[int], out: str | Path) -> list[dict]:
    """``stage1`` None skips stage 1 (the ablation, or stage 2 straight from a pretrained model). With a pretrained
    start and ``stage1``, stage 1 starts from the pretrained model too, fits its FMG to the fold's masks and hands
    the whole model on to stage 2."""
    out = Path(out)
    results = []
    for fold in folds:
        fold_dir = out / f"fold_{fold}"
        result_path = fold_dir / "result.json"
        if result_path.is_file():  # finished earlier: resume with the next fold
            results.append(json.loads(result_path.read_text()))
            continue
        t0 = time.perf_counter()
        cfg2 = _for_fold(stage2, fold, fold_dir / "stage2")
        if stage1 is not None:
            first = train(_for_fold(stage1, fold, fold_dir / "stage1"))
            if not first.finished:  # --stop-after: the same command resumes this fold from its last.pt
                break
            cfg2.init = str(first.checkpoint)  # a pretrained start's other nets ride along in it unchanged
        second = train(cfg2)
        if not second.finished:
            break
        result = test_fold(second.checkpoint, cfg2)
        result.update(fold=fold, wall_s=round(time.perf_counter() - t0, 1))
        _write_text(result_path, json.dumps(result, indent=2))
        # Resume skips a fold with a result, so its optimizer state (~130 MB a fold, cpu profile) is dead weight.
        for state in fold_dir.glob("stage*/last.pt"):
            state.unlink(missing_ok=True)  # several ranks may get here
        log.info("fold %d: accuracy %.4f (%d images)", fold, result["accuracy"], result["n"])
        results.append(result)
    if not results:  # paused before any fold finished: no table to write
        return results
    summary = {
        "folds": results,
        "mean_accuracy": mean_accuracy(results),
        "mean_accuracy_mirrored": mean_mirrored(results),
    }
    _write_text(out / "results.json", json.dumps(summary, indent=2))
    report = [format_table(results), format_pooled(results), format_wrong(results)]
    _write_text(out / "table.md", "\n\n".join(report) + "\n")
    return results


def _for_fold(cfg: TrainConfig, fold: int, out: Path) -> TrainConfig:
    cfg = copy.deepcopy(cfg)
    cfg.data.fold = fold
    cfg.out = str(out)
    if cfg.init:
        cfg.init = cfg.init.replace("{fold}", str(fold))  # a per-fold start, as --masks
    return cfg


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all (under torchrun every rank writes the same file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _device(name: str) -> torch.device:
    """Where to test: the device trained on (``cuda:1`` stays ``cuda:1``), the CPU when there is no GPU."""
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if name == "auto" else name)


def test_fold(checkpoint: Path, cfg: TrainConfig) -> dict:
    return score_views([load_checkpoint(checkpoint)], load_splits(cfg.data).eval, _device(cfg.device))


def ensemble_fold(runs: list[str | Path], fold: int, device: str = "cpu") -> dict:
    """One fold's test accuracy of several CV runs together: their final models' class probabilities averaged.

    Each run is read back as it trained (its stage-2 config.json and model.safetensors), so runs of different
    seeds, schedules or models (FMPN and the CN alone) combine, as long as they tested the same images.
    """
    checkpoints, split = [], None
    for run in runs:
        stage_dir = Path(run) / f"fold_{fold}" / "stage2"
        weights = stage_dir / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: fold {fold} of {run} has not finished")
        cfg = TrainConfig.from_dict(json.loads((stage_dir / "config.json").read_text()))
        run_split = load_splits(cfg.data).eval
        if split is not None and (run_split.samples != split.samples or run_split.classes != split.classes):
            raise ValueError(f"fold {fold} of {run} tested other images or classes than {runs[0]}: no ensemble")
        split = split or run_split
        checkpoints.append(load_checkpoint(weights))
    if split is None:
        raise ValueError("an ensemble needs at least one run")
    result = score_views(checkpoints, split, _device(device))
    result.update(fold=fold)
    return result


def score_views(checkpoints: list[Checkpoint], split: SampleSet, device: torch.device) -> dict:
    """The paper's one-view result, with the mirrored one (each face and its mirror image averaged, as the
    released model serves) under ``"mirrored"``: one test, both figures, no second run to compare them."""
    one_view_probs, mirrored_probs, labels = ensemble_views(checkpoints, split, device)
    one_view = score(one_view_probs, labels, list(split.classes))
    mirrored = score(mirrored_probs, labels, list(split.classes))
    result = one_view.to_dict()
    result["mirrored"] = {"accuracy": mirrored.accuracy, "confusion": mirrored.confusion}
    result["wrong"] = wrong_faces(split, one_view_probs, mirrored_probs, labels)
    return result


def wrong_faces(split: SampleSet, one_view: torch.Tensor, mirrored: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Each test face that either view gets wrong, by file: what a reader opens to see why a fold is low."""
    classes = split.classes
    first, second = one_view.argmax(1), mirrored.argmax(1)
    out = []
    for i in torch.nonzero((first != labels) | (second != labels)).flatten().tolist():
        out.append(
            {
                "file": str(split.samples[i].path),
                "label": classes[int(labels[i])],
                "one_view": classes[int(first[i])],
                "p_one_view": round(float(one_view[i, first[i]]), 3),
                "mirrored": classes[int(second[i])],
                "p_mirrored": round(float(mirrored[i, second[i]]), 3),
            }
        )
    return out


def mean_accuracy(results: list[dict]) -> float:
    """The paper's metric: the unweighted mean of the per-fold one-view accuracies."""
    return sum(r["accuracy"] for r in results) / max(len(results), 1)


def mean_mirrored(results: list[dict]) -> float | None:
    """The same for the mirrored test; None where a fold has none (tested before the figure existed)."""
    if not results or not all("mirrored" in r for r in results):
        return None
    return sum(r["mirrored"]["accuracy"] for r in results) / len(results)


def format_table(results: list[dict]) -> str:
    """The original README's table: one column per fold, then the mean of folds; a mirrored row where every
    fold has one."""
    head = "| fold | " + " | ".join(str(r["fold"]) for r in results) + " | mean |"
    sep = "|---" * (len(results) + 2) + "|"
    acc = (
        "| accuracy | " + " | ".join(f"{r['accuracy']:.3f}" for r in results) + f" | **{mean_accuracy(results):.4f}** |"
    )
    frac = "| correct | " + " | ".join(f"{round(r['accuracy'] * r['n'])}/{r['n']}" for r in results) + " | |"
    rows = [head, sep, acc, frac]
    mirrored = mean_mirrored(results)
    if mirrored is not None:
        per_fold = " | ".join(f"{r['mirrored']['accuracy']:.3f}" for r in results)
        rows.append(f"| mirrored | {per_fold} | **{mirrored:.4f}** |")
    return "\n".join(rows)


def pooled(results: list[dict], mirrored: bool = False) -> EvalResult:
    """Every fold's test faces counted together: which classes the folds' errors fall on (the paper's metric
    stays the mean of folds; this is for reading the errors, not for ranking runs)."""
    confusions = [r["mirrored"]["confusion"] if mirrored else r["confusion"] for r in results]
    k = len(results[0]["classes"])
    total = [[sum(c[i][j] for c in confusions) for j in range(k)] for i in range(k)]
    return from_confusion(total, results[0]["classes"])


def format_pooled(results: list[dict]) -> str:
    """Per-class recall and confusion of all folds pooled, one view and (where every fold has it) mirrored."""
    parts = [f"all folds pooled, one view: {pooled(results).format()}"]
    if mean_mirrored(results) is not None:
        parts.append(f"all folds pooled, mirrored: {pooled(results, mirrored=True).format()}")
    return "\n\n".join(parts)


def format_wrong(results: list[dict]) -> str:
    """The faces wrong in either view, fold by fold (folds tested before the list existed have none)."""
    lines = ["faces wrong one view or mirrored (fold, file, label, one view p, mirrored p):"]
    unlisted = [str(r["fold"]) for r in results if "wrong" not in r]
    if unlisted:
        folds = ", ".join(unlisted)
        lines.append(f"  (folds {folds}: tested before the list was kept; `fmpn cv-ensemble RUN` lists them)")
    for r in results:
        for w in r.get("wrong", []):
            lines.append(
                f"  {r['fold']}  {w['file']}  {w['label']}  {w['one_view']} {w['p_one_view']:.2f}"
                f"  {w['mirrored']} {w['p_mirrored']:.2f}"
            )
    if len(lines) == 1:
        lines.append("  none: every face right in both views")
    return "\n".join(lines)
