"""The original FMPN pre-processing, shared by image and mask.

Resize the shorter side to ``load_size``, then take one of the five ``image_size`` crops (train with
augmentation: a random one; otherwise the centre) and flip with p = 0.5 (train only). The same crop
and flip go to the image and its class mask, as the original's shared ``lucky_dict``.

``augment="strong"`` adds what the original lacks and FER2013 needs (with the original's, the ``cpu``
profile's training cross-entropy falls to 0.3 within 25 epochs while validation stalls at ~63 %): a random
rotation, scale and shift shared by image and mask, then random erasing of one patch of the image only
(the mask target is unchanged).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from fmpn.images import image_array

CENTRE = 4  # five_crop order: top-left, top-right, bottom-left, bottom-right, centre


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        return image.resize((size, max(size, round(h * size / w))), Image.BILINEAR)
    return image.resize((max(size, round(w * size / h)), size), Image.BILINEAR)


def crop_box(height: int, width: int, size: int, index: int) -> tuple[int, int]:
    """Top-left corner of five-crop ``index`` (torchvision's five_crop/center_crop geometry)."""
    if index == 0:
        return 0, 0
    if index == 1:
        return 0, width - size
    if index == 2:
        return height - size, 0
    if index == 3:
        return height - size, width - size
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def to_tensor(image: Image.Image | np.ndarray) -> Tensor:
    """uint8 (H, W[, C]) -> float (C, H, W) in [0, 1], no mean/std normalisation (as the original)."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


AUGMENTS = ("crop", "strong")  # crop: the original's five-crop + flip; strong: + affine + erasing
# Corners and the erased patch are filled with 0, the image's and mask's black.
STRONG_AFFINE = v2.RandomAffine(
    degrees=10.0, translate=(0.06, 0.06), scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR
)
STRONG_ERASE = v2.RandomErasing(p=0.5, scale=(0.02, 0.12), ratio=(1 / 3, 3.0), value=0.0)


class PairedTransform:
    """Image (+ its class mask) -> cropped tensors; one random crop/flip decision for both."""

    def __init__(
        self, image_size: int, load_size: int, train: bool, augment: bool = True, strength: str = "crop"
    ) -> None:
        if load_size < image_size:
            raise ValueError(f"load_size {load_size} must be >= image_size {image_size}")
        if strength not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {strength!r}")
        self.image_size, self.load_size = image_size, load_size
        self.random = train and augment
        self.strong = self.random and strength == "strong"
        self._masks: dict[tuple[int, int, int], Tensor] = {}  # (id(mask), h, w) -> resized mask

    def __call__(self, image: Image.Image | np.ndarray, mask: np.ndarray | None = None) -> tuple[Tensor, Tensor | None]:
        """``image``: a PIL image (decoded as the service decodes a photo: :func:`fmpn.images.image_array`) or
        an array :func:`fmpn.images.read_image` gave, (H, W, 3) RGB or (H, W) grey uint8."""
        img = to_tensor(resize_shorter(Image.fromarray(rgb_array(image)), self.load_size))
        _, h, w = img.shape
        if mask is not None:
            key = (id(mask), h, w)
            if key not in self._masks:
                self._masks[key] = mask_tensor(mask, h, w)
            mask = self._masks[key]
        index = int(torch.randint(5, ()).item()) if self.random else CENTRE
        flip = self.random and bool(torch.rand(()) < 0.5)
        top, left = crop_box(h, w, self.image_size, index)
        img = img[:, top : top + self.image_size, left : left + self.image_size]
        if mask is not None:
            mask = mask[:, top : top + self.image_size, left : left + self.image_size]
        if flip:
            img = img.flip(-1)
            mask = mask.flip(-1) if mask is not None else None
        if self.strong:  # one warp of image and mask stacked: the same geometry for both
            both = STRONG_AFFINE(img if mask is None else torch.cat([img, mask]))
            img, mask = (both, None) if mask is None else (both[:3], both[3:])
            img = STRONG_ERASE(img)
        return img, mask


def rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An image as the (H, W, 3) uint8 RGB array the service would decode it to."""
    if isinstance(image, Image.Image):
        return image_array(image, "RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"an image array must be (H, W, 3) or (H, W) uint8, got {arr.shape} {arr.dtype}")
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def mask_tensor(mask: np.ndarray, height: int, width: int) -> Tensor:
    """A class mask resized (bilinear, as the original's PIL resize) to the resized image's size."""
    im = Image.fromarray(mask).resize((width, height), Image.BILINEAR)
    return to_tensor(im)
