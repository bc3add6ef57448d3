"""DataConfig -> train/eval datasets with their class masks."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from fmpn.classes import CKPLUS
from fmpn.data import FaceDataset, PairedTransform, SampleSet, ckplus48_samples, fmpn_samples, folder_samples
from fmpn.masks import load_mask_folder, masks_for_classes
from fmpn.profiles import Profile
from training.config import DataConfig
from training.neutral import add_neutral

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: SampleSet
    eval: SampleSet | None  # validation (folder sets) or the test fold (CK+, MMI)
    classes: list[str]
    masks: list[np.ndarray] | None


def load_splits(cfg: DataConfig, classes: list[str] | None = None) -> Splits:
    if cfg.neutral and cfg.layout != "ckplus48":
        raise ValueError(f"--neutral adds CK+ neutral faces to CK+ folds: it needs --layout ckplus48, not {cfg.layout}")
    if cfg.layout == "folder":
        train = folder_samples(cfg.root, classes)
        evals = folder_samples(cfg.val_root, train.classes) if cfg.val_root else None
    elif cfg.layout == "ckplus48":
        fold = _need_fold(cfg)
        train, evals = ckplus48_samples(cfg.root, fold, "train"), ckplus48_samples(cfg.root, fold, "test")
        if cfg.neutral:
            train = add_neutral(train, evals, cfg.neutral)
    elif cfg.layout == "fmpn":
        if cfg.dataset == "affectnet":
            train_csv, test_csv = "train_ids.csv", "test_ids.csv"
        else:
            fold = _need_fold(cfg)
            train_csv, test_csv = f"train_ids_{fold}.csv", f"test_ids_{fold}.csv"
        train = fmpn_samples(cfg.root, train_csv, cfg.dataset, cfg.images)
        evals = fmpn_samples(cfg.root, test_csv, cfg.dataset, cfg.images)
    else:
        raise ValueError(f"unknown data layout {cfg.layout!r}; use folder, ckplus48 or fmpn")
    for split in (train, evals):
        if split is not None and split.unreadable:
            log.warning("%d unreadable images skipped: %s", len(split.unreadable), split.unreadable[:5])
    if cfg.limit:
        train.samples = _balanced_subset(train, cfg.limit)
    return Splits(train, evals, train.classes, _masks(cfg, train.classes))


def _need_fold(cfg: DataConfig) -> int:
    if cfg.fold is None:
        raise ValueError(f"layout {cfg.layout!r} needs a fold (0-9)")
    return cfg.fold


def _masks(cfg: DataConfig, classes: list[str]) -> list[np.ndarray] | None:
    if cfg.masks is None:
        if cfg.layout == "fmpn" and cfg.dataset in ("ckplus", "mmi"):
            folder = Path(cfg.root) / "imgs_res" / str(cfg.fold)  # the original per-fold masks
            return load_mask_folder(folder, len(classes))
        return None
    folder = Path(cfg.masks.replace("{fold}", str(cfg.fold)))
    source_classes = cfg.mask_classes or list(CKPLUS)
    return masks_for_classes(classes, source_classes, load_mask_folder(folder, len(source_classes)))


def _balanced_subset(split: SampleSet, limit: int) -> list:
    """The first ``limit`` samples taken round-robin over classes, so small runs see every class."""
    by_class: dict[int, list] = {}
    for s in split.samples:
        by_class.setdefault(s.label, []).append(s)
    out, i = [], 0
    while len(out) < limit and any(i < len(v) for v in by_class.values()):
        out += [v[i] for v in by_class.values() if i < len(v)]
        i += 1
    return out[:limit]


def make_dataset(
    split: SampleSet, profile: Profile, masks: list[np.ndarray] | None, train: bool, augment: str = "crop"
) -> FaceDataset:
    transform = PairedTransform(profile.image_size, profile.load_size, train=train, strength=augment)
    return FaceDataset(split, transform, masks)


class BalancedSampler(Sampler[int]):
    """Draws each epoch's images with replacement, an image of class c with weight count(c) ** -power.

    Small classes (CK+ contempt, FER2013 disgust) are otherwise seen a few dozen times an epoch.
    ``power`` 0 keeps the natural frequencies, 1 draws every class equally often, 0.5 is between.
    Every rank makes the same draw (seeded by seed + epoch, so a resumed run draws the same) and
    takes every ``world_size``-th index of it, as ``DistributedSampler`` splits a permutation.
    """

    def __init__(self, labels: Sequence[int], power: float, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0.0 <= power <= 1.0:
            raise ValueError(
                f"--balance must be between 0 (natural frequencies) and 1 (classes equally often), got {power}"
            )
        labels_arr = np.asarray(labels, dtype=np.int64)
        if labels_arr.size == 0:
            raise ValueError("cannot balance an empty training set")
        counts = np.bincount(labels_arr).astype(np.float64)
        self.weights = torch.as_tensor(counts[labels_arr] ** -power, dtype=torch.float64)
        self.num_samples = math.ceil(len(labels_arr) / world_size)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.world_size
        drawn = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(drawn[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples
