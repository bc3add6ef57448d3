"""Pseudo ground-truth motion masks: one grey map per class, the FMG's training target.

The original ships CK+ and MMI masks as ``imgs_res/<fold>/<class index>.png``. Datasets without
neutral/peak pairs (FER2013, AffectNet) borrow the CK+ masks by class name; ``neutral`` has no
motion of its own, so it gets the mean of all expression masks, re-equalised: the map of where
faces move at all, which keeps the FMG's target a face-shaped prior rather than an empty image that
would zero the focus branch for every neutral face.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fmpn.classes import canonical


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG as a (H, W) uint8 array."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from None


def load_mask_folder(folder: str | Path, num_classes: int) -> list[np.ndarray]:
    """``folder/<i>.png`` for i in range(num_classes), the original layout of one fold."""
    folder = Path(folder)
    missing = [str(folder / f"{i}.png") for i in range(num_classes) if not (folder / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"mask folder {folder} lacks {', '.join(missing)}")
    return [read_mask(folder / f"{i}.png") for i in range(num_classes)]


def masks_for_classes(
    target_classes: Sequence[str], source_classes: Sequence[str], source_masks: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Masks for ``target_classes`` taken from ``source`` by canonical class name (see module doc)."""
    by_name = {canonical(n): m for n, m in zip(source_classes, source_masks, strict=True)}
    size = source_masks[0].shape
    mean = cv2.equalizeHist(np.mean([m.astype(np.float32) for m in source_masks], axis=0).round().astype(np.uint8))
    out = []
    for name in target_classes:
        key = canonical(name)
        if key in by_name:
            out.append(by_name[key])
        elif key == "neutral":
            out.append(mean)
        else:
            raise ValueError(
                f"no mask for class {name!r}: source classes are {', '.join(source_classes)} (plus 'neutral')"
            )
        assert out[-1].shape == size
    return out
