"""Face detection with MTCNN (facenet-pytorch's networks; their weights ship inside the wheel, nothing downloads).

The cascade around the networks is :mod:`fmpn.mtcnn`: the same faces as facenet-pytorch's ``MTCNN.detect``,
in 0.77-0.95 of its time on photos on a CPU. ``detect_near`` looks for faces only around boxes already known (a
video's faces in the frame before): a small square around each face instead of the whole frame's image pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from fmpn.mtcnn import Cascade, nms_min


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth


def face_from_resized(face: Face, sx: float, sy: float, x0: float = 0.0, y0: float = 0.0) -> Face:
    """``face``, found on a resized copy of an image region, in the image's pixels.

    The copy is the region resized by ``sx`` along x and ``sy`` along y (its size over the region's, per axis: a
    resize rounds each side on its own), as ``cv2.resize`` resizes: an edge at u in the region is at u * s in the
    copy; (``x0``, ``y0``) is where the copy's top-left corner (edge coordinates 0, 0) lies in the image.
    Conventions (the rest of the package's): a box's values are *edges*, continuous coordinates with 0 the
    image's left / top edge and W / H its right / bottom one (boxes are clipped to (0, 0, W, H)), so
    u = u' / s + x0; landmarks are *pixel centres*, array coordinates where pixel i's centre is at i (as
    ``cv2.warpAffine`` reads them), i.e. an edge coordinate minus 0.5, so p = (p' + 0.5) / s - 0.5 + x0.
    """
    x1, y1, x2, y2 = (float(v) for v in face.box)
    box = (x1 / sx + x0, y1 / sy + y0, x2 / sx + x0, y2 / sy + y0)
    scale, shift = np.array([sx, sy]), np.array([x0, y0], dtype=np.float64)
    landmarks = (np.asarray(face.landmarks, dtype=np.float64) + 0.5) / scale - 0.5 + shift
    return Face(box, face.score, landmarks)


class FaceDetector:
    """MTCNN returning every face with its 5 landmarks, largest first."""

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = 20) -> None:
        self.cascade = Cascade(device, min_face_size=min_face_size)  # MTCNN's thresholds (0.6, 0.7, 0.7)

    def detect(self, image: np.ndarray) -> list[Face]:
        """``image``: (H, W, 3) uint8 RGB."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Several images, one at a time (:meth:`detect_same_size` batches images of one size)."""
        return [self.detect_same_size([image])[0] for image in images]

    def detect_same_size(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Images of one size in one pass of the cascade."""
        out: list[list[Face]] = []
        for boxes, points in self.cascade(np.stack(images)):
            faces = [
                Face(tuple(float(v) for v in box[:4]), float(box[4]), pts.astype(np.float64))
                for box, pts in zip(boxes, points, strict=True)
            ]
            faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
            out.append(faces)
        return out

    def detect_near(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]], context: float = 3.0, side: int = 144
    ) -> list[Face]:
        """The face near each of ``boxes`` (x1, y1, x2, y2 in image pixels), largest first.

        Each box's square of ``context`` times its size, centred on it (black beyond the image's edges), is
        resized to ``side`` pixels, and all of them go through the cascade in one pass, looking for faces from
        half the box's size to the whole square: a face that moved up to a face width, or grew or shrank by half,
        is found again. Of each square's faces the one nearest its centre is kept (a neighbour's face is its own
        box's: of the face's size, nearest the centre); two boxes that came to the same face give it once.
        """
        squares, places = [], []
        for x1, y1, x2, y2 in (tuple(b[:4]) for b in boxes):
            n = max(1, round(context * max(x2 - x1, y2 - y1, 1.0)))
            x0, y0 = round((x1 + x2 - n) / 2), round((y1 + y2 - n) / 2)
            square, place = _square(image, x0, y0, n, side)
            squares.append(square)
            places.append(place)
        if not squares:
            return []
        found: list[Face] = []
        smallest = max(12, round(side / context / 2))
        for (boxes_, points), place in zip(self.cascade(np.stack(squares), smallest), places, strict=True):
            if not len(boxes_):
                continue
            # the face this square was made for: nearest its centre, of the box's size (a neighbour may be as near)
            sizes = np.maximum(boxes_[:, 2] - boxes_[:, 0], boxes_[:, 3] - boxes_[:, 1])
            shift = np.hypot(boxes_[:, 0] + boxes_[:, 2] - side, boxes_[:, 1] + boxes_[:, 3] - side) / 2 / sizes
            i = int(np.argmin(shift + np.abs(np.log(sizes * context / side))))
            box = boxes_[i]
            found.append(face_from_resized(Face(tuple(box[:4]), float(box[4]), points[i]), *place))
        if not found:
            return []
        keep = nms_min(np.array([f.box for f in found]), np.array([f.score for f in found]), 0.5)
        kept = [found[i] for i in keep]
        kept.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return kept


def _square(
    image: np.ndarray, x0: int, y0: int, n: int, side: int
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The image's n x n square at (x0, y0), black beyond its edges, resized to side x side: the part inside the
    image is resized alone (a face filling a 4K frame does not make a 6,000-pixel square first).

    Returns the square and how it maps back, (sx, sy, ox, oy) for :func:`face_from_resized`: the exact scales of
    the part's resize (each side rounded on its own) and where the square's corner lies in the image at them."""
    height, width = image.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(width, x0 + n), min(height, y0 + n)
    s = side / n
    ca, ra = round((xa - x0) * s), round((ya - y0) * s)
    cb, rb = min(side, round((xb - x0) * s)), min(side, round((yb - y0) * s))
    if cb > ca and rb > ra:
        part = image[ya:yb, xa:xb]
        out[ra:rb, ca:cb] = cv2.resize(
            part, (cb - ca, rb - ra), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        )
        sx, sy = (cb - ca) / (xb - xa), (rb - ra) / (yb - ya)
        return out, (sx, sy, xa - ca / sx, ya - ra / sy)  # square edge u' is image edge xa + (u' - ca) / sx
    return out, (s, s, float(x0), float(y0))
