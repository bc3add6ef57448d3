"""Face alignment: a similarity transform from MTCNN's 5 points onto a crop template.

The same function crops faces for training (raw photos) and for the service, so the model always
sees the framing it was trained on. The template is stored in every checkpoint; the default below
is the mean MTCNN landmark position measured on the FER2013 training crops (tight face crops), see
``fmpn masks template`` / ``training/template.py``.
"""

from __future__ import annotations

import cv2
import numpy as np

# Crop-relative (x, y) of: left eye, right eye, nose tip, left mouth corner, right mouth corner.
# Mean MTCNN landmarks (facenet-pytorch, crops upsampled to 160 px, single faces with score >= 0.95),
# measured by ``fmpn masks template`` (training/template.py):
#   fer2013:  1000 random FER2013 train crops (seed 0), 864 used; per-point std about 0.10-0.13
#             (FER2013 crops vary a lot in scale and pose).
#   ckplus48: all 981 CK+48 crops, 975 used; per-point std 0.02-0.07.
TEMPLATES: dict[str, list[list[float]]] = {
    "fer2013": [
        [0.3030, 0.3916],
        [0.7066, 0.3853],
        [0.5029, 0.6263],
        [0.3401, 0.8359],
        [0.6772, 0.8333],
    ],
    "ckplus48": [
        [0.2991, 0.4190],
        [0.6938, 0.4117],
        [0.4970, 0.6223],
        [0.3353, 0.8323],
        [0.6702, 0.8281],
    ],
}
DEFAULT_TEMPLATE: list[list[float]] = TEMPLATES["fer2013"]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping ``src`` points onto ``dst``.

    Umeyama's closed form; returns the 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s**2).sum() / len(src)
    scale = (sig * np.diag(sign)).sum() / var_s if var_s > 0 else 1.0
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int,
    template: list[list[float]] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` (H, W[, C] uint8) so the 5 ``landmarks`` land on ``template`` in a ``size`` crop.

    ``template``: (5, 2) crop-relative points, a list or an array (None: ``DEFAULT_TEMPLATE``).
    Returns the crop and the 2x3 image->crop matrix (invert it to map the crop, or a mask, back).
    """
    tpl = np.asarray(DEFAULT_TEMPLATE if template is None else template, dtype=np.float64) * size
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), tpl)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
