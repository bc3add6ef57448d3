"""Accuracy, per-class recall and the confusion matrix of a model on a dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from fmpn.checkpoint import Checkpoint, load_checkpoint
from fmpn.classes import map_classes
from fmpn.data import FaceDataset, Sample, SampleSet
from fmpn.models import FMPN, view_probabilities
from training.data import make_dataset


@dataclass
class EvalResult:
    classes: list[str]
    n: int
    accuracy: float
    per_class_recall: list[float | None]  # None for a class with no test image
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    skipped_classes: list[str]  # dataset classes the model does not know
    skipped_images: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        width = max(len(c) for c in self.classes)
        lines = [f"accuracy {self.accuracy:.4f} ({round(self.accuracy * self.n)}/{self.n})", "", "per-class recall:"]
        for name, recall, row in zip(self.classes, self.per_class_recall, self.confusion, strict=True):
            shown = "   -  " if recall is None else f"{recall:.4f}"
            lines.append(f"  {name:<{width}}  {shown}  (n={sum(row)})")
        lines += [
            "",
            "confusion (rows true, columns predicted):",
            " " * (width + 2) + " ".join(c[:5].rjust(5) for c in self.classes),
        ]
        lines += [
            f"  {name:<{width}}" + " ".join(f"{v:5d}" for v in row)
            for name, row in zip(self.classes, self.confusion, strict=True)
        ]
        if self.skipped_classes:
            lines.append(
                f"\nskipped dataset classes the model does not have: {', '.join(self.skipped_classes)} "
                f"({self.skipped_images} images)"
            )
        return "\n".join(lines)


def remap(split: SampleSet, model_classes: list[str]) -> tuple[SampleSet, list[str], int]:
    """Relabel ``split`` into the model's classes by name; drop (and report) classes it lacks."""
    mapping = map_classes(split.classes, model_classes)
    skipped = [c for i, c in enumerate(split.classes) if i not in mapping] + split.skipped_classes
    kept = [Sample(s.path, mapping[s.label]) for s in split.samples if s.label in mapping]
    dropped = len(split.samples) - len(kept)
    if not kept:
        raise ValueError(f"none of the dataset classes {split.classes} match the model classes {model_classes}")
    return SampleSet(kept, list(model_classes), skipped, split.unreadable), skipped, dropped


def evaluate(
    model: FMPN,
    dataset: FaceDataset,
    device: torch.device,
    batch_size: int = 128,
    amp: bool = False,
    skipped_classes: list[str] | None = None,
    skipped_images: int = 0,
    flip_average: bool = False,
) -> EvalResult:
    probs, labels = predict(model, dataset, device, batch_size, amp, flip_average)
    return score(probs, labels, list(dataset.classes), skipped_classes, skipped_images)


def predict(
    model: FMPN,
    dataset: FaceDataset,
    device: torch.device,
    batch_size: int = 128,
    amp: bool = False,
    flip_average: bool = False,
) -> tuple[Tensor, Tensor]:
    """Class probabilities (N, K, float32 on the CPU) and labels (N) in the dataset's order, so that several
    models' probabilities on one dataset can be averaged (ensembles) before scoring."""
    probs, mirrored, labels = predict_views(model, dataset, device, batch_size, amp, mirror=flip_average)
    return (probs if mirrored is None else (probs + mirrored) / 2), labels


@torch.inference_mode()
def predict_views(
    model: FMPN,
    dataset: FaceDataset,
    device: torch.device,
    batch_size: int = 128,
    amp: bool = False,
    mirror: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Probabilities of the faces as given, of their mirror images (``mirror``, else None) and the labels, as
    ``fmpn.models.view_probabilities`` computes them for the service: one forward pass for both views."""
    model.eval()
    probs, mirrored, labels = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            p, m, _ = view_probabilities(model, batch["image"].to(device), mirror)
        probs.append(p.cpu())
        if m is not None:
            mirrored.append(m.cpu())
        labels.append(batch["label"])
    return torch.cat(probs), (torch.cat(mirrored) if mirror else None), torch.cat(labels)


def load_ensemble(paths: list[str]) -> list[Checkpoint]:
    """Checkpoints whose probabilities are to be averaged: they must share their classes, in order."""
    ckpts = [load_checkpoint(path) for path in paths]
    for path, ckpt in zip(paths[1:], ckpts[1:], strict=True):
        if ckpt.classes != ckpts[0].classes:
            raise ValueError(f"{path} has classes {ckpt.classes}, {paths[0]} {ckpts[0].classes}: no ensemble")
    return ckpts


def ensemble_probabilities(
    checkpoints: list[Checkpoint],
    split: SampleSet,
    device: torch.device,
    batch_size: int = 128,
    flip_average: bool | None = None,
    amp: bool = False,
) -> tuple[Tensor, Tensor]:
    """Several models' class probabilities on ``split``, averaged; each reads the faces at its own profile's size.
    ``flip_average`` None: as each checkpoint says (like the service). ``amp``: bf16 autocast."""
    total = labels = None
    for ckpt in checkpoints:
        dataset = make_dataset(split, ckpt.profile, None, train=False)
        flip = ckpt.flip_average if flip_average is None else flip_average
        probs, labels = predict(ckpt.build_model().to(device), dataset, device, batch_size, amp, flip)
        total = probs if total is None else total + probs
    if total is None:
        raise ValueError("an ensemble needs at least one model")
    return total / len(checkpoints), labels


def ensemble_views(
    checkpoints: list[Checkpoint], split: SampleSet, device: torch.device, batch_size: int = 128, amp: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Several models' probabilities on ``split``, averaged, one view and mirrored (each face with its mirror
    image): both from one forward pass of each face and its mirror per model."""
    if not checkpoints:
        raise ValueError("an ensemble needs at least one model")
    views = [
        predict_views(
            ckpt.build_model().to(device),
            make_dataset(split, ckpt.profile, None, train=False),
            device,
            batch_size,
            amp,
            mirror=True,
        )
        for ckpt in checkpoints
    ]
    one_view = sum(probs for probs, _, _ in views) / len(views)
    mirrored = sum((probs + flipped) / 2 for probs, flipped, _ in views if flipped is not None) / len(views)
    return one_view, mirrored, views[0][2]


def score(
    probs: Tensor,
    labels: Tensor,
    classes: list[str],
    skipped_classes: list[str] | None = None,
    skipped_images: int = 0,
) -> EvalResult:
    k = len(classes)
    confusion = torch.bincount(labels * k + probs.argmax(1), minlength=k * k).view(k, k)
    return from_confusion(confusion.tolist(), classes, skipped_classes, skipped_images)


def from_confusion(
    confusion: list[list[int]],
    classes: list[str],
    skipped_classes: list[str] | None = None,
    skipped_images: int = 0,
) -> EvalResult:
    """Accuracy and recall from counts alone, so that per-fold confusions can be summed and scored again."""
    k = len(classes)
    n = sum(map(sum, confusion))
    recall = [None if sum(confusion[i]) == 0 else confusion[i][i] / sum(confusion[i]) for i in range(k)]
    return EvalResult(
        classes=list(classes),
        n=n,
        accuracy=sum(confusion[i][i] for i in range(k)) / max(n, 1),
        per_class_recall=recall,
        confusion=[list(row) for row in confusion],
        skipped_classes=skipped_classes or [],
        skipped_images=skipped_images,
    )
