"""One reader for image files on disk (faces, masks): a clear error naming the file, never a PIL trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_image(path: str | Path, mode: str = "RGB", what: str = "image") -> np.ndarray:
    """``path`` as a uint8 array in PIL ``mode`` ('RGB': (H, W, 3); 'L': (H, W), ITU-R 601 luma)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.uint8).copy()
    except Exception as exc:  # OSError, a decompression bomb, a plugin's own errors: name the file
        raise ValueError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from None


def pad_edges(image: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """``image`` (H, W, C) with a margin of ``fraction`` of its longer side (at least 1 px) on every side, edge
    pixels repeated: the detector's retry framing for faces that fill the frame. Returns (padded, margin)."""
    pad = max(1, round(fraction * max(image.shape[:2])))
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge"), pad
