"""Accuracy, per-class recall and the confusion matrix of a model on a dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fmpn.checkpoint import Checkpoint, load_checkpoint
from fmpn.classes import canonical, map_classes
from fmpn.data import FaceDataset, Sample, SampleSet
from fmpn.models import view_probabilities
from fmpn.models.fuse import prepare_for_inference
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
    # ``--detect``: per true class, images in which no face was found (counted wrong; not in ``confusion``)
    no_face: list[int] = field(default_factory=list)
    # How far the top probability can be trusted (None where only counts were summed, as over folds):
    # its mean, the expected calibration error over ECE_BINS equal bins of it, and the mean -log p(true class).
    mean_confidence: float | None = None
    ece: float | None = None
    nll: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        width = max(len(c) for c in self.classes)
        lines = [f"accuracy {self.accuracy:.4f} ({round(self.accuracy * self.n)}/{self.n})"]
        if self.ece is not None:
            lines.append(
                f"calibration: mean top probability {self.mean_confidence:.4f}, expected calibration error "
                f"{self.ece:.4f} ({ECE_BINS} bins), NLL {self.nll:.4f}" + (" (faces found)" if self.no_face else "")
            )
        lines += ["", "per-class recall:"]
        missing = self.no_face or [0] * len(self.classes)
        for name, recall, row, none in zip(self.classes, self.per_class_recall, self.confusion, missing, strict=True):
            shown = "   -  " if recall is None else f"{recall:.4f}"
            lines.append(f"  {name:<{width}}  {shown}  (n={sum(row) + none})")
        missed = sum(self.no_face)
        if missed:
            found = self.n - missed
            right = sum(self.confusion[i][i] for i in range(len(self.classes)))
            lines += [
                "",
                f"no face found in {missed} of {self.n} images (counted wrong, column 'none');"
                f" on the {found} with a face: accuracy {right / max(found, 1):.4f} ({right}/{found})",
            ]
        columns = [*self.classes, "none"] if missed else self.classes
        rows = [[*row, none] if missed else row for row, none in zip(self.confusion, missing, strict=True)]
        lines += [
            "",
            "confusion (rows true, columns predicted):",
            " " * (width + 2) + " ".join(c[:5].rjust(5) for c in columns),
        ]
        lines += [
            f"  {name:<{width}}" + " ".join(f"{v:5d}" for v in row)
            for name, row in zip(self.classes, rows, strict=True)
        ]
        if self.skipped_classes:
            lines.append(
                f"\nskipped dataset classes the model does not have: {', '.join(self.skipped_classes)} "
                f"({self.skipped_images} images)"
            )
        return "\n".join(lines)


def extends(model_classes: list[str], classes: list[str]) -> bool:
    """Whether a model's classes are ``classes``, in order, and more after them (a CK+ fold model trained with an
    extra ``neutral``): such a model is scored on the dataset's classes, the softmax of its first logits."""
    head = [canonical(c) for c in model_classes[: len(classes)]]
    return len(model_classes) > len(classes) and head == [canonical(c) for c in classes]


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
    model: nn.Module,
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
    model: nn.Module,
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
    model: nn.Module,
    dataset: FaceDataset,
    device: torch.device,
    batch_size: int = 128,
    amp: bool = False,
    mirror: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Probabilities of the faces as given, of their mirror images (``mirror``, else None) and the labels, as
    ``fmpn.models.view_probabilities`` computes them for the service: one forward pass for both views. A model with
    classes after the dataset's (``--neutral``) is scored on the dataset's: the softmax of its first logits."""
    model.eval()
    probs, mirrored, labels = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            p, m, _ = view_probabilities(model, batch["image"].to(device), mirror, len(dataset.classes))
        probs.append(p.cpu())
        if m is not None:
            mirrored.append(m.cpu())
        labels.append(batch["label"])
    return torch.cat(probs), (torch.cat(mirrored) if mirror else None), torch.cat(labels)


def _for_inference(ckpt: Checkpoint, device: torch.device, amp: bool) -> nn.Module:
    """The checkpoint's model as the service runs it (``fmpn.models.fuse``): evaluation scores what it serves."""
    return prepare_for_inference(ckpt.build_model(), "bfloat16" if amp else "float32", device)


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
        probs, labels = predict(_for_inference(ckpt, device, amp), dataset, device, batch_size, amp, flip)
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
    for ckpt in checkpoints:
        head = [canonical(c) for c in ckpt.classes[: len(split.classes)]]
        if head != [canonical(c) for c in split.classes]:
            raise ValueError(f"a model with classes {ckpt.classes} cannot score the classes {split.classes} in order")
    views = [
        predict_views(
            _for_inference(ckpt, device, amp),
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
    found: Tensor | None = None,
) -> EvalResult:
    """``found`` (``--detect``): False where no face was found in the image; those count as wrong."""
    k = len(classes)
    if found is None:
        found = torch.ones(len(labels), dtype=torch.bool)
    seen, missed = labels[found], labels[~found]
    confusion = torch.bincount(seen * k + probs[found].argmax(1), minlength=k * k).view(k, k)
    no_face = torch.bincount(missed, minlength=k).tolist()
    result = from_confusion(confusion.tolist(), classes, skipped_classes, skipped_images, no_face)
    if len(seen):
        result.mean_confidence, result.ece, result.nll = calibration(probs[found].double(), seen)
    return result


ECE_BINS = 15


def calibration(probs: Tensor, labels: Tensor) -> tuple[float, float, float]:
    """(mean top probability, expected calibration error, negative log-likelihood) of (N, C) probabilities: the
    ECE is the gap between accuracy and mean top probability in ECE_BINS equal bins of it, weighted by their size."""
    confidence, predicted = probs.max(1)
    right = (predicted == labels).double()
    bins = (confidence * ECE_BINS).ceil().clamp(1, ECE_BINS).long() - 1
    ece = 0.0
    for b in bins.unique():
        inside = bins == b
        ece += inside.double().mean().item() * abs(right[inside].mean().item() - confidence[inside].mean().item())
    nll = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()
    return confidence.mean().item(), ece, nll


def detect_probabilities(
    checkpoint: str, split: SampleSet, device: torch.device, precision: str, flip_average: bool | None, chunk: int = 32
) -> tuple[Tensor, Tensor, Tensor]:
    """The service's path from whole images: decode, MTCNN, 5-point alignment onto the checkpoint's template,
    the model. Each image's largest face is scored; ``found`` is False where none was found.

    This measures what a user gets from a photo, where the crop comes from the detector, not from the dataset.
    """
    from fmpn.inference import Predictor, load_image_file  # MTCNN is loaded only for --detect

    predictor = Predictor(checkpoint, device, precision=precision, max_faces=1, flip_average=flip_average)
    probs = torch.zeros(len(split.samples), len(predictor.classes), dtype=torch.float64)
    found = torch.zeros(len(split.samples), dtype=torch.bool)
    for start in range(0, len(split.samples), chunk):
        batch = split.samples[start : start + chunk]
        images = [load_image_file(s.path).rgb for s in batch]
        for i, result in enumerate(predictor.predict(images), start=start):
            if result.faces:
                probs[i] = torch.from_numpy(result.faces[0].probabilities)
                found[i] = True
    labels = torch.tensor([s.label for s in split.samples], dtype=torch.long)
    return probs, labels, found


def from_confusion(
    confusion: list[list[int]],
    classes: list[str],
    skipped_classes: list[str] | None = None,
    skipped_images: int = 0,
    no_face: list[int] | None = None,
) -> EvalResult:
    """Accuracy and recall from counts alone, so that per-fold confusions can be summed and scored again.
    ``no_face``: per class, images without a face found (``--detect``), which count as wrong."""
    k = len(classes)
    missed = list(no_face) if no_face else [0] * k
    totals = [sum(confusion[i]) + missed[i] for i in range(k)]
    n = sum(totals)
    recall = [None if totals[i] == 0 else confusion[i][i] / totals[i] for i in range(k)]
    return EvalResult(
        classes=list(classes),
        n=n,
        accuracy=sum(confusion[i][i] for i in range(k)) / max(n, 1),
        per_class_recall=recall,
        confusion=[list(row) for row in confusion],
        skipped_classes=skipped_classes or [],
        skipped_images=skipped_images,
        no_face=missed if any(missed) else [],
    )
