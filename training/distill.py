"""Teacher soft labels (knowledge distillation, Hinton et al. 2015), computed once before training.

FER2013's labels are noisy and many faces sit between two classes (fear and surprise, sad and neutral);
a one-hot target pushes the network to certainty on each of them. Trained models, alone or averaged,
already say how ambiguous each face is. ``fmpn soft-labels`` runs them once over the training images and
stores their class probabilities, file by file; ``fmpn train stage2 --soft-labels FILE`` then trains
towards ``(1 - w) * one-hot + w * teacher probabilities``. Computing the targets once (each centre face
averaged with its mirror image, the teachers' best view) costs one pass of inference instead of a teacher
forward at every training step; the student still sees the usual augmented views.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from fmpn.checkpoint import Checkpoint
from fmpn.data import SampleSet
from training.evaluate import ensemble_probabilities

FORMAT = "fmpn-soft-labels/1"


def check_weight(weight: float) -> None:
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"--soft-weight must be above 0 and at most 1 (1: teacher targets alone), got {weight}")


def _file_names(split: SampleSet, root: str | Path) -> list[str]:
    """Each image's name relative to the dataset root, so that the file works from any checkout
    (absolute for images kept outside the root, as the fmpn layout's ``--images`` allows)."""
    base = Path(root).resolve()
    names = []
    for sample in split.samples:
        path = sample.path.resolve()
        names.append(path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix())
    return names


def write_soft_labels(
    teachers: list[Checkpoint],
    names: list[str],
    split: SampleSet,
    root: str | Path,
    out: str | Path,
    device: torch.device,
    amp: bool = False,
) -> Path:
    """The teachers' averaged class probabilities on every image of ``split`` (N, K), with file names."""
    probs, _ = ensemble_probabilities(teachers, split, device, flip_average=True, amp=amp)
    meta = {
        "format": FORMAT,
        "classes": json.dumps(list(split.classes)),
        "files": json.dumps(_file_names(split, root)),
        "teachers": json.dumps(names),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"probs": probs}, str(out), metadata=meta)
    return out


def load_soft_labels(path: str | Path, split: SampleSet, root: str | Path) -> Tensor:
    """(N, K) teacher probabilities in ``split``'s sample order; every training image must have a row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"soft labels {path} not found: make them with `fmpn soft-labels`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            probs = f.get_tensor("probs").float() if meta.get("format") == FORMAT else None
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a soft-label file: {exc}") from None
    if probs is None:
        raise ValueError(f"{path} is not a soft-label file (format {meta.get('format')!r}, expected {FORMAT!r})")
    classes, files = json.loads(meta["classes"]), json.loads(meta["files"])
    if classes != list(split.classes):
        raise ValueError(f"{path} has classes {classes}, the training data {list(split.classes)}")
    rows = {name: i for i, name in enumerate(files)}
    keys = _file_names(split, root)
    missing = [k for k in keys if k not in rows]
    if missing:
        raise ValueError(
            f"{path} has no soft label for {len(missing)} of the {len(keys)} training images "
            f"(e.g. {missing[0]}): make it with `fmpn soft-labels` on this data"
        )
    return probs[[rows[k] for k in keys]]
