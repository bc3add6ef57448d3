"""Figures people look at: the class masks, predicted masks over validation faces per class, and per class the
mean predicted mask over all its validation faces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader

from fmpn.checkpoint import load_checkpoint
from fmpn.data import folder_samples
from fmpn.masks import load_mask_folder, masks_for_classes
from training.data import make_dataset


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def heat_map(mask: np.ndarray) -> np.ndarray:
    """A (H, W) mask in [0, 1] as an RGB (H, W, 3) uint8 JET heat map."""
    return cv2.applyColorMap((mask * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]


def heat_overlay(face: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB face (H, W, 3) uint8 with a (H, W) mask in [0, 1] blended on as a JET heat map."""
    return (face * (1 - alpha) + heat_map(mask) * alpha).astype(np.uint8)


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


@dataclass
class MeanMasks:
    """Per class, over its validation faces: how many, the share predicted right, and the Pearson correlation of
    the FMG's mean predicted mask with every class's target mask (rows: the faces' class, columns: the target's).
    ``correlation`` compares the masks as they are; all of them share the face's outline, eyes and mouth, so it is
    high everywhere. ``specific`` first subtracts the mean over classes from the predicted masks and from the
    targets: what is left is each class's own motion, and a generator that draws the same mask for every class
    scores about 0 on its diagonal."""

    classes: list[str]
    counts: list[int]
    recall: list[float]
    correlation: list[list[float]]
    specific: list[list[float]]

    def format(self) -> str:
        width = max(len(c) for c in self.classes)
        header = " " * (width + 2) + " ".join(c[:7].rjust(7) for c in self.classes)
        lines = []
        for title, matrix in (("as they are", self.correlation), ("less the mean over classes", self.specific)):
            lines += [f"correlation of each class's mean predicted mask with each class's target, {title}:", header]
            lines += [
                f"  {name:<{width}}" + " ".join(f"{v:7.3f}" for v in row)
                for name, row in zip(self.classes, matrix, strict=True)
            ]
        lines.append(
            "faces (recall): "
            + ", ".join(f"{c} {n} ({r:.3f})" for c, n, r in zip(self.classes, self.counts, self.recall, strict=True))
        )
        return "\n".join(lines)


def _correlations(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """Pearson correlation of every row of ``a`` (K, ...) with every row of ``b``; a flat row (masks are 0-1, so a
    spread under 1e-6 is rounding) correlates 0 with everything."""

    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).double()
        x = x - x.mean(1, keepdim=True)
        std = x.std(1, keepdim=True)
        return torch.where(std > 1e-6, x / std.clamp_min(1e-6), torch.zeros_like(x))

    ua, ub = unit(a), unit(b)
    return ((ua @ ub.T) / (ua.shape[1] - 1)).tolist()


@torch.inference_mode()
def mean_masks_figure(
    checkpoint: str | Path,
    data: str | Path,
    masks: Sequence[np.ndarray],
    out: str | Path,
    tile: int = 128,
    limit_per_class: int | None = None,
    batch_size: int = 256,
) -> tuple[Path, MeanMasks]:
    """Columns = classes; rows: the mean of the class's validation faces, the FMG's mean predicted mask laid over
    it, and the mask the FMG was trained towards. An average of dozens to hundreds of faces shows where the generator
    puts motion per class without showing any one person, so this figure, unlike ``predicted-masks.png``, can be
    committed. ``masks``: the class masks in the checkpoint's class order."""
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model().eval()
    if not model.has_mask:
        raise ValueError(f"{checkpoint} has no motion-mask generator (an ablation model): no masks to draw")
    split = folder_samples(data, ckpt.classes, check=False)
    if limit_per_class is not None:
        taken = [0] * len(ckpt.classes)
        kept = []
        for sample in split.samples:
            if taken[sample.label] < limit_per_class:
                taken[sample.label] += 1
                kept.append(sample)
        split.samples = kept
    k, size = len(ckpt.classes), ckpt.profile.image_size
    faces, predicted, targets = torch.zeros(k, size, size), torch.zeros(k, size, size), torch.zeros(k, size, size)
    counts, right = torch.zeros(k), torch.zeros(k)
    dataset = make_dataset(split, ckpt.profile, list(masks), train=False)
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits, mask = model(batch["image"])
        labels = batch["label"]
        faces.index_add_(0, labels, batch["image"].mean(1))
        predicted.index_add_(0, labels, mask[:, 0].float())
        targets.index_add_(0, labels, batch["mask"][:, 0])
        counts += torch.bincount(labels, minlength=k)
        right += torch.bincount(labels[logits.argmax(1) == labels], minlength=k)
    if (counts == 0).any():
        missing = [c for c, n in zip(ckpt.classes, counts.tolist(), strict=True) if n == 0]
        raise ValueError(f"{data} has no validation faces of {', '.join(missing)}: every class needs some")
    scale = counts.view(k, 1, 1)
    faces, predicted, targets = faces / scale, predicted / scale, targets / scale
    stats = MeanMasks(
        list(ckpt.classes),
        counts.int().tolist(),
        (right / counts).tolist(),
        _correlations(predicted, targets),
        _correlations(predicted - predicted.mean(0), targets - targets.mean(0)),
    )

    gap, top, left, bottom = 6, 24, 118, 20
    rows = ("mean face", "mean predicted\nmask", "target mask")
    canvas = Image.new("RGB", (left + k * (tile + gap), top + len(rows) * (tile + gap) + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(ckpt.classes):
        x = left + i * (tile + gap)
        face = np.repeat((faces[i].numpy() * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        # Both masks on the targets' scale (0-1), so that their colours compare directly.
        predicted_mask = predicted[i].clamp(0, 1).numpy()
        cells = (face, heat_overlay(face, predicted_mask), heat_map(targets[i].numpy()))
        for r, img in enumerate(cells):
            resized = cv2.resize(np.ascontiguousarray(img), (tile, tile), interpolation=cv2.INTER_LINEAR)
            canvas.paste(Image.fromarray(resized), (x, top + r * (tile + gap)))
        draw.text((x + 2, 4), name, fill="black", font=_font(15))
        caption = f"n={stats.counts[i]}  r={stats.correlation[i][i]:.2f} / {stats.specific[i][i]:.2f}"
        draw.text((x + 2, top + len(rows) * (tile + gap)), caption, fill="black", font=_font(13))
    for r, name in enumerate(rows):
        draw.multiline_text((6, top + r * (tile + gap) + tile // 2 - 14), name, fill="black", font=_font(14))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out, stats


def fer2013_class_masks(
    mask_dir: str | Path, classes: Sequence[str], source_classes: Sequence[str]
) -> list[np.ndarray]:
    return masks_for_classes(classes, source_classes, load_mask_folder(mask_dir, len(source_classes)))
