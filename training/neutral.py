"""CK+ neutral faces as an extra training class for the CK+ protocol.

CK+ labels seven expressions and no neutral, so a model fine-tuned on it has nowhere to put a face with
little motion: most of its errors are such frames called contempt, the subtlest class (docs/results.md).
Frame 1 of every CK+ sequence is neutral, and ``ckplus-neutral-peak`` holds it. ``write_neutral_faces``
turns those crops into CK+48's framing and size; ``add_neutral`` appends the ones of subjects outside the
test fold to a fold's training split as class ``neutral``. Tests stay on the seven CK+ classes:
``training.evaluate`` takes the softmax of the first seven logits (``fmpn.models.view_probabilities``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2

from fmpn.data import Sample, SampleSet
from fmpn.images import read_image
from training.masks import read_index_rows

NEUTRAL = "neutral"
# ckplus48 is the same Haar crop as ckplus-neutral-peak, 128 -> 48 px, less about 2 px a side: on the 397
# apex frames in both sets, a 2 px inset gives a median pixel correlation of 0.973 (0 px: 0.950, 4 px: 0.958).
INSET = 2 / 128
SIZE = 48
INDEX = "index.csv"


def neutral_rows(pairs_dir: str | Path) -> list[dict]:
    """One neutral (first-frame) crop per CK+ sequence, labelled or not, sorted by sequence.

    Frames with several Haar detections are left out (one of them may not be a face); a file listed twice
    (``err/`` holds copies) counts once.
    """
    rows = read_index_rows(pairs_dir)
    by_sequence: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["relpath"]):
        if row["frame_role"].startswith("first") and not row["haar_multi_detection_index"].strip():
            by_sequence.setdefault(row["sequence"], row)
    return [by_sequence[s] for s in sorted(by_sequence)]


def write_neutral_faces(pairs_dir: str | Path, out: str | Path) -> int:
    """``out/neutral/<file>.png`` (48 px grey, CK+48's framing) and ``out/index.csv`` (relpath, subject,
    sequence); returns the number of faces written."""
    pairs_dir, out = Path(pairs_dir), Path(out)
    rows = neutral_rows(pairs_dir)
    if not rows:
        raise ValueError(f"{pairs_dir / INDEX} lists no single-detection neutral (first) frame")
    (out / NEUTRAL).mkdir(parents=True, exist_ok=True)
    listed = []
    for row in rows:
        image = read_image(pairs_dir / row["relpath"], "L", what="neutral frame")  # the service's decoder
        h, w = image.shape
        dy, dx = round(h * INSET), round(w * INSET)
        face = cv2.resize(image[dy : h - dy, dx : w - dx], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        relpath = f"{NEUTRAL}/{Path(row['relpath']).name}"
        cv2.imwrite(str(out / relpath), face)
        listed.append((relpath, row["subject"], row["sequence"]))
    with open(out / INDEX, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["relpath", "subject", "sequence"])
        writer.writerows(listed)
    return len(listed)


def add_neutral(train: SampleSet, test: SampleSet, neutral_dir: str | Path) -> SampleSet:
    """``train`` plus the neutral faces of every subject without a face in ``test``, as a last class.

    Subjects are the first ``_`` field of CK+ file names (``S010_004_00000017.png``), so no test subject's
    neutral face is trained on and the folds stay subject-independent.
    """
    index = Path(neutral_dir) / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"no {INDEX} in {neutral_dir}: write it with `fmpn masks neutral-faces`")
    if NEUTRAL in train.classes:
        raise ValueError(f"the training split already has a class {NEUTRAL!r}")
    held_out = {s.path.name.split("_")[0] for s in test.samples}
    with open(index, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = reader.fieldnames or []
    if columns != ["relpath", "subject", "sequence"] or not all(r["relpath"].startswith("neutral/") for r in rows):
        raise ValueError(
            f"{neutral_dir} is not a folder written by `fmpn masks neutral-faces` (its {INDEX} has the columns "
            f"{', '.join(columns)}): every face added would be called neutral"
        )
    label = len(train.classes)
    added = [Sample(Path(neutral_dir) / r["relpath"], label) for r in rows if r["subject"] not in held_out]
    if not added:
        raise ValueError(f"{index} has no neutral face of a training subject")
    return SampleSet(train.samples + added, [*train.classes, NEUTRAL], train.skipped_classes, train.unreadable)
