"""Measure the crop template: where MTCNN puts its 5 landmarks on a dataset's tight face crops.

The service crops faces from photos with MTCNN + a 5-point similarity alignment onto a template
(``fmpn.align``). For those crops to be framed like the training crops (FER2013, CK+48), the template
is the mean MTCNN landmark position on the training crops, crop-relative in [0, 1]. Small crops
(48 px) are upsampled before detection (MTCNN's smallest face is about 20 px) and only images where
MTCNN finds exactly one face with a confident score count.

``fmpn masks template DATA_DIR`` runs :func:`measure_template` and prints it as JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fmpn.align import align_face
from fmpn.images import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # as the loaders take
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def list_images(data_dir: str | Path) -> list[Path]:
    """Every image under ``data_dir`` (recursively), sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"image folder {data_dir} does not exist")
    paths = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {data_dir}")
    return paths


def sample_images(paths: Sequence[Path], limit: int | None, seed: int = 0) -> list[Path]:
    """A reproducible random sample of ``limit`` paths (all of them when ``limit`` is None or larger)."""
    if limit is None or limit >= len(paths):
        return list(paths)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return sorted(random.Random(seed).sample(list(paths), limit))


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; a clear error naming the file when it cannot be decoded."""
    return read_image(path, "RGB")


def read_grey(path: str | Path) -> np.ndarray:
    """An image file as (H, W) uint8 grey (PIL 'L', ITU-R 601 luma); a clear error naming the file."""
    return read_image(path, "L")


def detect_relative(
    images: Sequence[np.ndarray], detector, size: int = 160, batch_size: int = 64
) -> list[list[tuple[float, np.ndarray]]]:
    """MTCNN faces of each image as ``(score, landmarks (5, 2) relative to the image, in [0, 1])``.

    Every image is resized to ``size`` x ``size`` first (cubic), so equal-size batches go through
    MTCNN at once. ``detector`` is a :class:`fmpn.detect.FaceDetector`.
    """
    out: list[list[tuple[float, np.ndarray]]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = []
        for im in chunk:
            h, w = im.shape[:2]
            batch.append(cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC) if (h, w) != (size, size) else im)
        for faces in detector.detect_same_size(batch):
            out.append([(f.score, f.landmarks / size) for f in faces])
    return out


@dataclass
class TemplateMeasurement:
    """Mean landmark positions over the images where MTCNN found exactly one confident face."""

    data_dir: str
    template: np.ndarray  # (5, 2) mean, crop-relative
    std: np.ndarray  # (5, 2) per-point std
    n_images: int
    n_used: int
    n_no_face: int
    n_multiple: int
    n_low_score: int
    min_score: float
    upsample: int
    used_paths: list[Path] = field(default_factory=list, repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)  # (n_used, 5, 2)

    @property
    def detection_rate(self) -> float:
        return self.n_used / self.n_images if self.n_images else 0.0

    def template_list(self, digits: int = 4) -> list[list[float]]:
        return [[round(float(x), digits), round(float(y), digits)] for x, y in self.template]

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "template": self.template_list(),
            "std": [[round(float(x), 4), round(float(y), 4)] for x, y in self.std],
            "points": list(POINT_NAMES),
            "n_images": self.n_images,
            "n_used": self.n_used,
            "detection_rate": round(self.detection_rate, 4),
            "n_no_face": self.n_no_face,
            "n_multiple": self.n_multiple,
            "n_low_score": self.n_low_score,
            "min_score": self.min_score,
            "upsample": self.upsample,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def measure_template(
    data_dir: str | Path,
    limit: int | None = 1000,
    seed: int = 0,
    upsample: int = 160,
    min_score: float = 0.95,
    detector=None,
) -> TemplateMeasurement:
    """Mean MTCNN 5-point landmarks (crop-relative) over a sample of the face crops under ``data_dir``.

    An image counts when MTCNN returns exactly one face and its score is at least ``min_score``.
    """
    paths = sample_images(list_images(data_dir), limit, seed)
    if detector is None:
        from fmpn.detect import FaceDetector

        detector = FaceDetector()
    used: list[Path] = []
    marks: list[np.ndarray] = []
    n_none = n_multi = n_low = 0
    chunk = 256  # bounded memory: read, detect, drop
    for start in range(0, len(paths), chunk):
        part = paths[start : start + chunk]
        faces = detect_relative([read_rgb(p) for p in part], detector, size=upsample)
        for path, found in zip(part, faces, strict=True):
            if not found:
                n_none += 1
            elif len(found) > 1:
                n_multi += 1
            elif found[0][0] < min_score:
                n_low += 1
            else:
                used.append(path)
                marks.append(found[0][1])
    if not marks:
        raise ValueError(f"MTCNN found no single confident face in {len(paths)} images under {data_dir}")
    stack = np.stack(marks)
    return TemplateMeasurement(
        data_dir=str(data_dir),
        template=stack.mean(0),
        std=stack.std(0),
        n_images=len(paths),
        n_used=len(used),
        n_no_face=n_none,
        n_multiple=n_multi,
        n_low_score=n_low,
        min_score=min_score,
        upsample=upsample,
        used_paths=used,
        landmarks=stack,
    )


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@dataclass
class AlignmentCheck:
    """How well aligning each crop with its own landmarks to the template reproduces the crop."""

    per_image: np.ndarray  # Pearson correlation, aligned crop vs the crop itself, per image
    mean_image: float  # correlation of the mean aligned crop with the mean crop (the framing on average)

    def to_dict(self) -> dict:
        c = self.per_image
        return {
            "n": int(len(c)),
            "per_image_mean": round(float(c.mean()), 4),
            "per_image_median": round(float(np.median(c)), 4),
            "per_image_p05": round(float(np.percentile(c, 5)), 4),
            "mean_image": round(self.mean_image, 4),
        }


def self_alignment_check(
    measurement: TemplateMeasurement, template: Sequence[Sequence[float]] | None = None, size: int = 64
) -> AlignmentCheck:
    """Align each used crop with its own landmarks to ``template`` at ``size`` px and compare with the crop.

    The comparison is with the original crop resized to ``size``. Per image, the correlation is as
    high as that face sits where the template expects it (FER2013 crops vary a lot in scale, CK+48
    little); the mean-image correlation says whether the template reproduces the framing on average.
    """
    if measurement.landmarks is None:
        raise ValueError("the measurement holds no per-image landmarks")
    tpl = [list(map(float, p)) for p in (template if template is not None else measurement.template)]
    per_image = []
    sum_aligned = np.zeros((size, size))
    sum_ref = np.zeros((size, size))
    for path, lm in zip(measurement.used_paths, measurement.landmarks, strict=True):
        grey = read_grey(path)
        h, w = grey.shape
        crop, _ = align_face(grey, lm * np.array([w, h]), size, tpl)
        ref = cv2.resize(grey, (size, size), interpolation=cv2.INTER_LINEAR)
        per_image.append(pearson(crop, ref))
        sum_aligned += crop
        sum_ref += ref
    return AlignmentCheck(np.asarray(per_image), pearson(sum_aligned, sum_ref))


def original_framing_template(landmark_json: str | Path, eye_x: float = 0.275, eye_y: float = 1 / 3.5) -> np.ndarray:
    """The 5-point template of the original FMPN framing, from its shipped CK+ MTCNN landmarks.

    The recipe in the reference (section 7) puts the eye centres at (0.275, 1/3.5) and (0.725, 1/3.5);
    the other three points are the mean of every shipped CK+ face after the similarity that puts its
    eyes there. ``landmark_json``: ``fmpn-original/datasets/CKPlus/bbox_landmark_mtcnn.json``.
    """
    with open(landmark_json) as fh:
        data = json.load(fh)
    eyes = np.array([[eye_x, eye_y], [1 - eye_x, eye_y]])
    points = []
    for entry in data.values():
        marks = entry["landmarks"] if isinstance(entry, dict) else entry[1]
        boxes = entry["boxes"] if isinstance(entry, dict) else entry[0]
        if not marks:
            continue
        # Several detections: the highest-scoring box is the face (box[4] is the score).
        best = int(np.argmax([b[4] for b in boxes])) if boxes and len(boxes) == len(marks) else 0
        lm = np.asarray(marks[best], dtype=np.float64)
        pts = np.stack([lm[:5], lm[5:10]], axis=1)  # x of 5 points, then y
        # Similarity from the two eyes onto the target eyes (exact for two points).
        src = pts[1] - pts[0]
        dst = eyes[1] - eyes[0]
        scale = np.hypot(*dst) / np.hypot(*src)
        ang = np.arctan2(dst[1], dst[0]) - np.arctan2(src[1], src[0])
        rot = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        points.append((pts - pts[0]) @ rot.T + eyes[0])
    if not points:
        raise ValueError(f"no landmarks in {landmark_json}")
    return np.mean(points, axis=0)
