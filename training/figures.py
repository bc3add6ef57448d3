"""Figures people look at: the class masks, and predicted masks over validation faces per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fmpn.checkpoint import load_checkpoint
from fmpn.data import folder_samples
from fmpn.masks import load_mask_folder, masks_for_classes
from training.data import make_dataset


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def heat_overlay(face: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB face (H, W, 3) uint8 with a (H, W) mask in [0, 1] blended on as a JET heat map."""
    heat = cv2.applyColorMap((mask * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (face * (1 - alpha) + heat * alpha).astype(np.uint8)


def class_masks_figure(masks: Sequence[np.ndarray], classes: Sequence[str], out: str | Path, tile: int = 128) -> Path:
    """One row: the training target mask of every class."""
    gap, top = 6, 26
    canvas = Image.new("RGB", (len(classes) * (tile + gap) + gap, tile + top + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, mask) in enumerate(zip(classes, masks, strict=True)):
        x = gap + i * (tile + gap)
        heat = cv2.applyColorMap(cv2.resize(mask, (tile, tile)), cv2.COLORMAP_JET)[:, :, ::-1]
        canvas.paste(Image.fromarray(np.ascontiguousarray(heat)), (x, top))
        draw.text((x + 2, 4), name, fill="black", font=_font(15))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


@torch.inference_mode()
def predicted_masks_figure(
    checkpoint: str | Path, data: str | Path, out: str | Path, per_class: int = 4, tile: int = 96, seed: int = 0
) -> Path:
    """Rows = classes; each cell a validation face with the FMG's predicted mask over it, and the
    predicted label (green when right, red when wrong)."""
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    split = folder_samples(data, ckpt.classes, check=False)
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for label in range(len(ckpt.classes)):
        idx = [i for i, s in enumerate(split.samples) if s.label == label]
        picks += list(rng.choice(idx, size=min(per_class, len(idx)), replace=False)) if idx else []
    dataset = make_dataset(split, ckpt.profile, None, train=False)
    images = torch.stack([dataset[i]["image"] for i in picks])
    logits, masks = model(images)
    preds = logits.argmax(1).tolist()
    gap, left, top = 4, 90, 8
    canvas = Image.new(
        "RGB", (left + per_class * 2 * (tile + gap), top + len(ckpt.classes) * (tile + gap + 14)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    for k, i in enumerate(picks):
        label = split.samples[i].label
        row = label
        col = k - sum(1 for j in picks[:k] if split.samples[j].label != label)
        face = (images[k].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        mask = masks[k, 0].numpy() if masks is not None else np.zeros(face.shape[:2])
        x = left + col * 2 * (tile + gap)
        y = top + row * (tile + gap + 14)
        for j, img in enumerate((face, heat_overlay(face, mask))):
            canvas.paste(
                Image.fromarray(cv2.resize(img, (tile, tile), interpolation=cv2.INTER_NEAREST)),
                (x + j * (tile + gap), y),
            )
        colour = (0, 140, 0) if preds[k] == label else (200, 0, 0)
        draw.text((x, y + tile + 1), f"pred: {ckpt.classes[preds[k]]}", fill=colour, font=font)
        if col == 0:
            draw.text((6, y + tile // 2 - 6), ckpt.classes[label], fill="black", font=_font(15))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def fer2013_class_masks(
    mask_dir: str | Path, classes: Sequence[str], source_classes: Sequence[str]
) -> list[np.ndarray]:
    return masks_for_classes(classes, source_classes, load_mask_folder(mask_dir, len(source_classes)))
