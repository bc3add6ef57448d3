"""Overlay rendering: the photo with each face's box, label and motion mask as a heat map."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fmpn.inference import ImagePrediction

# Box colours (RGB), one per face index, repeating.
PALETTE = [
    (255, 255, 255),
    (0, 200, 255),
    (255, 210, 0),
    (120, 255, 120),
    (255, 120, 200),
    (255, 150, 50),
    (170, 140, 255),
    (0, 255, 200),
]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_overlay(
    image: np.ndarray,
    prediction: ImagePrediction,
    classes: list[str],
    *,
    alpha: float = 0.45,
    boxes: bool = True,
    labels: bool = True,
    max_side: int | None = None,
    ids: Sequence[int] | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same image (optionally downscaled to ``max_side``) with the overlay.
    ``ids``: each face's number in its label and colour (a video's track ids); default its index."""
    h, w = image.shape[:2]
    scale = 1.0
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    result = np.array(image, dtype=np.uint8, copy=True)
    oh, ow = result.shape[:2]
    alpha = float(min(max(alpha, 0.0), 1.0))
    if alpha > 0:
        for face in prediction.faces:
            _blend_mask(result, face.mask, scale * face.mask_to_image, alpha)
    if not (boxes or labels) or not prediction.faces:
        return result
    pil = Image.fromarray(result)
    draw = ImageDraw.Draw(pil)
    line = max(2, round(min(oh, ow) / 300))
    font = _font(max(12, round(min(oh, ow) / 40)))
    for index, face in enumerate(prediction.faces):
        i = index if ids is None else ids[index]
        colour = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (v * scale for v in face.box)
        if boxes:
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        if labels:
            best = int(np.argmax(face.probabilities))
            text = f"{i}: {classes[best]} {face.probabilities[best]:.0%}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            tx = min(max(0.0, x1), max(0.0, ow - tw - 2 * line))
            ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else min(y2 + line, oh - th - 2 * line)
            draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=(0, 0, 0))
            draw.text((tx + line - left, ty + line - top), text, fill=colour, font=font)
    return np.asarray(pil)


def _blend_mask(out: np.ndarray, mask: np.ndarray, mask_to_image: np.ndarray, alpha: float) -> None:
    """Warp ``mask`` (S, S) onto ``out`` (H, W, 3 uint8, in place) as a JET heat map, only around the face."""
    oh, ow = out.shape[:2]
    s = mask.shape[0]
    corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64) @ mask_to_image.T
    x0 = max(0, math.floor(corners[:, 0].min()) - 1)
    y0 = max(0, math.floor(corners[:, 1].min()) - 1)
    x1 = min(ow, math.ceil(corners[:, 0].max()) + 2)
    y1 = min(oh, math.ceil(corners[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    m = mask_to_image.copy()
    m[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    values = cv2.warpAffine(mask.astype(np.float32), m, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    cover = cv2.warpAffine(np.ones_like(mask, dtype=np.float32), m, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    heat = cv2.applyColorMap(np.clip(values * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    a = (alpha * np.clip(cover, 0.0, 1.0))[:, :, None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    roi *= 1.0 - a
    roi += heat.astype(np.float32) * a
    out[y0:y1, x0:x1] = np.clip(np.rint(roi), 0, 255).astype(np.uint8)


def encode_png(rgb: np.ndarray, compression: int = 1) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
