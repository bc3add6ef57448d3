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
from fmpn.images import read_image


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG as a (H, W) uint8 array."""
    return read_image(path, "L", "mask")


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


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Save a (H, W) uint8 mask as an 8-bit grey PNG, creating the folder."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask is a (H, W) uint8 array, got {mask.shape} {mask.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask, mode="L").save(path)
    return path


def list_mask_folds(root: str | Path) -> list[int]:
    """The numbered fold folders (``root/<k>/``) of a mask tree, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mask folder {root} does not exist")
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def mask_correlation(mask: np.ndarray, reference: np.ndarray) -> float:
    """Pearson correlation of two masks; ``mask`` is resized (bilinear) to ``reference``'s size first."""
    a = np.asarray(mask, dtype=np.float32)
    b = np.asarray(reference, dtype=np.float32)
    if a.shape != b.shape:
        a = cv2.resize(a, (b.shape[1], b.shape[0]), interpolation=cv2.INTER_LINEAR)
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0
