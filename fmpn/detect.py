"""Face detection with MTCNN (facenet-pytorch; its weights ship inside the wheel, nothing downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth


class FaceDetector:
    """MTCNN returning every face with its 5 landmarks, largest first."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> None:
        from facenet_pytorch import MTCNN

        self.min_face_size = min_face_size
        self.mtcnn = MTCNN(
            keep_all=True,
            device=torch.device(device),
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            post_process=False,
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        """``image``: (H, W, 3) uint8 RGB."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Several images at once; MTCNN batches only images of one size, so others run one by one."""
        out: list[list[Face]] = []
        for image in images:
            faces: list[Face] = []
            if min(image.shape[:2]) < self.min_face_size:  # no face fits (and MTCNN fails on an empty pyramid)
                out.append(faces)
                continue
            boxes, probs, points = self.mtcnn.detect(image, landmarks=True)
            if boxes is not None:
                for box, prob, pts in zip(boxes, probs, points, strict=True):
                    faces.append(Face(tuple(float(v) for v in box), float(prob), np.asarray(pts, dtype=np.float64)))
            faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
            out.append(faces)
        return out
