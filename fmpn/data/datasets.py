"""Face datasets: the FMPN layout (CK+, MMI, AffectNet), class-folder sets (FER2013) and CK+48.

Every loader produces a list of :class:`Sample` and the class names; :class:`FaceDataset` turns them
into training tensors. Unreadable images are found up front, counted and reported (never silently
dropped); a file or class that does not fit the layout is a clear error naming it.
"""

from __future__ import annotations

import csv
import io
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmpn.classes import AFFECTNET, CKPLUS, MMI, canonical
from fmpn.data.transforms import PairedTransform
from fmpn.images import image_array, read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
FMPN_DATASETS = {"ckplus": CKPLUS, "mmi": MMI, "affectnet": AFFECTNET}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class SampleSet:
    samples: list[Sample]
    classes: list[str]
    skipped_classes: list[str]  # class folders with no matching class (class-folder sets)
    unreadable: list[tuple[Path, str]]  # (file, reason), found by check_images

    def counts(self) -> list[int]:
        out = [0] * len(self.classes)
        for s in self.samples:
            out[s.label] += 1
        return out


def check_images(samples: Sequence[Sample]) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Decode every image once, as :class:`FaceDataset` will (:func:`fmpn.images.image_array`); return the
    readable ones and (path, reason) for the others."""
    ok, bad = [], []
    for s in samples:
        try:
            with Image.open(s.path) as im:
                image_array(im, "RGB")
            ok.append(s)
        except Exception as exc:  # OSError, a decompression bomb, malformed EXIF, a plugin's own errors
            bad.append((s.path, f"{type(exc).__name__}: {exc}"))
    if bad:
        log.warning("%d unreadable image(s) left out, e.g. %s (%s)", len(bad), bad[0][0], bad[0][1])
    return ok, bad


def _finish(samples: list[Sample], classes: list[str], skipped: list[str], check: bool) -> SampleSet:
    if not samples:
        raise ValueError("no images found for the requested split/classes")
    unreadable: list[tuple[Path, str]] = []
    if check:
        samples, unreadable = check_images(samples)
    return SampleSet(samples, list(classes), skipped, unreadable)


def folder_samples(root: str | Path, classes: Sequence[str] | None = None, check: bool = True) -> SampleSet:
    """Class-folder layout (``root/<class>/<image>``), e.g. FER2013 or CK+48.

    With ``classes`` given (say a checkpoint's), folders are matched by canonical name
    (``angry`` = ``anger``) and unmatched folders are reported in ``skipped_classes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    if classes is None:
        classes = [p.name for p in folders]
    index = {canonical(c): i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    skipped: list[str] = []
    for folder in folders:
        label = index.get(canonical(folder.name))
        if label is None:
            skipped.append(folder.name)
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [Sample(p, label) for p in files]
    return _finish(samples, list(classes), skipped, check)


def ckplus48_samples(root: str | Path, fold: int, split: str, check: bool = True) -> SampleSet:
    """CK+48 with its ``fmpn_ckplus_test_fold`` column: the original subject-independent folds."""
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    if not 0 <= fold <= 9:
        raise ValueError(f"CK+ folds are 0-9, not {fold}")
    rows = _read_csv(root / "index.csv")
    lacking = {"relpath", "ck_emotion_code", "fmpn_ckplus_test_fold"} - set(rows[0] if rows else ())
    if lacking:
        raise ValueError(f"{root / 'index.csv'} lacks the column(s) {', '.join(sorted(lacking))} of CK+48's index")
    samples = []
    for row in rows:
        try:
            row_fold, code = int(row["fmpn_ckplus_test_fold"]), int(row["ck_emotion_code"])
        except ValueError:
            raise ValueError(f"{row['relpath']}: fold and CK+ code must be whole numbers in index.csv") from None
        if not 1 <= code <= len(CKPLUS):  # -1: unlabelled
            raise ValueError(f"{row['relpath']}: CK+ code {code} is not one of 1-{len(CKPLUS)}")
        if (row_fold == fold) == (split == "test"):
            samples.append(Sample(root / row["relpath"], code - 1))
    return _finish(sorted(samples, key=lambda s: s.path.name), list(CKPLUS), [], check)


def fmpn_samples(
    data_root: str | Path,
    split_csv: str,
    dataset: str = "ckplus",
    images: str | Path | None = None,
    labels: str | Path | None = None,
    check: bool = True,
) -> SampleSet:
    """The original layout: ``data_root/imgs/<name>``, a split CSV of names, a label file.

    ``images`` may point elsewhere (e.g. ``ckplus48``, searched recursively by file name).
    Labels come from ``emotion_labels.csv`` (``key,label``) or the original ``.pkl``, read without
    unpickling any object. CK+ labels are raw codes 1-7 (class = code - 1); MMI and AffectNet
    labels are class indices. The key is the first two ``_`` fields of the name (the whole name
    for AffectNet).
    """
    if dataset not in FMPN_DATASETS:
        raise ValueError(f"unknown FMPN dataset {dataset!r}; use one of {', '.join(FMPN_DATASETS)}")
    classes = FMPN_DATASETS[dataset]
    data_root = Path(data_root)
    csv_path = data_root / split_csv
    if not csv_path.is_file():
        raise FileNotFoundError(f"split file not found: {csv_path}")
    names = sorted(n.strip() for n in csv_path.read_text().splitlines() if n.strip())
    label_map = read_labels(labels or _default_labels(data_root))
    image_dir = Path(images) if images else data_root / "imgs"
    where: dict[str, list[Path]] = {}
    for p in sorted(image_dir.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            where.setdefault(p.name, []).append(p)
    samples, missing = [], []
    offset = 1 if dataset == "ckplus" else 0
    for name in names:
        key = name if dataset == "affectnet" else "_".join(name.split("_")[:2])
        if key not in label_map:
            raise ValueError(f"{name} (from {csv_path.name}) has no label for key {key!r}")
        label = int(label_map[key]) - offset
        if not 0 <= label < len(classes):
            raise ValueError(f"{name}: label {label_map[key]} is outside the {len(classes)} {dataset} classes")
        if name not in where:
            missing.append(name)
            continue
        if len(where[name]) > 1:  # which copy would be read depended on the directory order
            found = ", ".join(str(p) for p in where[name][:3])
            raise ValueError(f"{name} is under {image_dir} {len(where[name])} times ({found}): point --images lower")
        samples.append(Sample(where[name][0], label))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) listed in {csv_path.name} are not under {image_dir}, e.g. {missing[:3]}"
        )
    return _finish(samples, list(classes), [], check)


def _default_labels(data_root: Path) -> Path:
    for name in ("emotion_labels.csv", "emotion_labels.pkl"):
        if (data_root / name).is_file():
            return data_root / name
    raise FileNotFoundError(f"no emotion_labels.csv or .pkl in {data_root}; pass labels=")


class _NoObjects(pickle.Unpickler):
    """Plain containers and numbers only: any class or function reference is refused."""

    def find_class(self, module: str, name: str):  # noqa: ANN201
        raise pickle.UnpicklingError(f"label file refers to {module}.{name}; only plain data is allowed")


def read_labels(path: str | Path) -> dict[str, float]:
    path = Path(path)
    if path.suffix == ".pkl":
        data = _NoObjects(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of labels, got {type(data).__name__}")
        return {str(k): float(v) for k, v in data.items()}
    rows = _read_csv(path)
    if not rows or len(rows[0]) < 2:
        raise ValueError(f"{path}: expected two columns (key,label)")
    key_col, label_col = list(rows[0])[:2]
    return {r[key_col]: float(r[label_col]) for r in rows}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class FaceDataset(torch.utils.data.Dataset):
    """Samples -> {"image": (3, S, S), "label", "index"[, "mask": (1, S, S)]} with the shared crop/flip."""

    def __init__(self, sample_set: SampleSet, transform: PairedTransform, masks: Sequence[np.ndarray] | None = None):
        if masks is not None and len(masks) != len(sample_set.classes):
            raise ValueError(f"{len(masks)} masks for {len(sample_set.classes)} classes")
        self.samples = sample_set.samples
        self.classes = sample_set.classes
        self.transform = transform
        self.masks = list(masks) if masks is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.path, "RGB")  # the service's decoding (fmpn.images.image_array)
        image, mask = self.transform(image, self.masks[sample.label] if self.masks else None)
        item = {"image": image, "label": sample.label, "index": index}
        if mask is not None:
            item["mask"] = mask
        return item
