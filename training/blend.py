"""Intermediate-intensity CK+ faces for the CK+ protocol (``fmpn cv --blends``).

CK+ keeps the last three frames of each sequence, and in short sequences the first of them is barely past
neutral. Those frames are most of what the fine-tuned models miss, and the FER2013 model reads them as
neutral (docs/results.md): there is little motion in them to see. A CK+ sequence is filmed by a fixed camera,
so its neutral frame and its apex are nearly aligned; blending the two, after a sub-pixel shift that aligns
them, gives faces between the two intensities, labelled with the sequence's class. ``write_blends`` writes
them once; ``add_blends`` adds those of subjects outside the test fold to a fold's training split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from fmpn.classes import canonical
from fmpn.data import Sample, SampleSet
from training.neutral import INDEX, training_subject_rows

WEIGHTS = (0.5, 0.75)  # the apex's share in each blend: halfway, and three quarters of the way


def apex_frames(ckplus48_dir: str | Path) -> dict[str, dict]:
    """The last (most intense) CK+48 frame of each labelled sequence, by sequence id."""
    index = Path(ckplus48_dir) / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"no {INDEX} in {ckplus48_dir} (expected the ckplus48 folder)")
    last: dict[str, dict] = {}
    with open(index, newline="") as fh:
        for row in csv.DictReader(fh):
            seen = last.get(row["sequence"])
            if seen is None or int(row["frame"]) > int(seen["frame"]):
                last[row["sequence"]] = row
    return last


def blend(neutral: np.ndarray, apex: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * neutral + weight * apex``, the neutral face first shifted onto the apex (phase
    correlation: the two are Haar crops of one sequence, a pixel or less apart)."""
    if neutral.shape != apex.shape:
        raise ValueError(f"a neutral face of {neutral.shape} cannot blend into an apex of {apex.shape}")
    a, n = apex.astype(np.float32), neutral.astype(np.float32)
    h, w = a.shape
    (dx, dy), _ = cv2.phaseCorrelate(n, a, cv2.createHanningWindow((w, h), cv2.CV_32F))
    shifted = cv2.warpAffine(n, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    return np.clip((1 - weight) * shifted + weight * a, 0, 255).round().astype(np.uint8)


def write_blends(
    ckplus48_dir: str | Path, neutral_dir: str | Path, out: str | Path, weights: tuple[float, ...] = WEIGHTS
) -> int:
    """``out/<class>/<sequence>_b<weight %>.png`` for every labelled sequence with a neutral face (from
    ``fmpn masks neutral-faces``) and ``out/index.csv`` (relpath, subject, sequence); returns the count."""
    if not weights or not all(0.0 < w < 1.0 for w in weights):
        raise ValueError(f"blend weights must lie strictly between 0 (neutral) and 1 (apex), got {list(weights)}")
    ckplus48_dir, neutral_dir, out = Path(ckplus48_dir), Path(neutral_dir), Path(out)
    neutral_index = neutral_dir / INDEX
    if not neutral_index.is_file():
        raise FileNotFoundError(f"no {INDEX} in {neutral_dir}: write it with `fmpn masks neutral-faces`")
    with open(neutral_index, newline="") as fh:
        neutral = {r["sequence"]: r for r in csv.DictReader(fh)}
    listed = []
    for sequence, row in sorted(apex_frames(ckplus48_dir).items()):
        if sequence not in neutral:
            continue  # frame 1 had several detections: no neutral face to trust
        apex = cv2.imread(str(ckplus48_dir / row["relpath"]), cv2.IMREAD_GRAYSCALE)
        face = cv2.imread(str(neutral_dir / neutral[sequence]["relpath"]), cv2.IMREAD_GRAYSCALE)
        if apex is None or face is None:
            raise ValueError(f"cannot read the apex or the neutral face of {sequence}")
        (out / row["folder"]).mkdir(parents=True, exist_ok=True)
        for weight in weights:
            relpath = f"{row['folder']}/{sequence}_b{round(weight * 100)}.png"
            cv2.imwrite(str(out / relpath), blend(face, apex, weight))
            listed.append((relpath, row["subject"], sequence))
    if not listed:
        raise ValueError(f"no sequence of {ckplus48_dir} has a neutral face in {neutral_dir}")
    with open(out / INDEX, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["relpath", "subject", "sequence"])
        writer.writerows(listed)
    return len(listed)


def add_blends(train: SampleSet, test: SampleSet, blends_dir: str | Path) -> SampleSet:
    """``train`` plus the blends of every subject without a face in ``test``, each labelled by its folder."""
    index = {canonical(c): i for i, c in enumerate(train.classes)}
    added = []
    for row in training_subject_rows(blends_dir, test, "fmpn masks blend-faces"):
        folder = row["relpath"].split("/")[0]
        if canonical(folder) not in index:
            raise ValueError(f"{blends_dir}/{row['relpath']}: class {folder!r} is not one of {train.classes}")
        added.append(Sample(Path(blends_dir) / row["relpath"], index[canonical(folder)]))
    return SampleSet(train.samples + added, train.classes, train.skipped_classes, train.unreadable)
