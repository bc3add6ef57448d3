"""Image decoding shared by everything that reads pixels: the service, training's data loader, masks, templates.

:func:`image_array` is the one conversion of a PIL image to upright 8-bit RGB (or grey): EXIF orientation
applied, 16-bit and float images scaled by their mode's range, transparency composited on white, palettes,
CMYK and YCbCr converted. The service (:func:`fmpn.inference.decode_image`), the training loader
(:class:`fmpn.data.PairedTransform`) and :func:`read_image` (masks, ``fmpn masks generate``, template
measurement) all go through it, so a file gives the same pixels wherever it is read. Ordinary 8-bit RGB / L
images without an EXIF orientation come out exactly as ``im.convert(mode)`` gives them.

:func:`read_image` reads a file with a clear error naming it, never a PIL trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Modes with an alpha channel (premultiplied ones included); P, L and RGB may carry a transparent colour instead.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_KEYED_MODES = ("P", "L", "RGB")


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag says (the tag removed), or ``im`` itself when it has none.

    Malformed EXIF raises (TypeError, ValueError, ...): callers name the file."""
    im.load()  # a PNG's eXIf chunk may follow the pixel data
    if im.getexif().get(ExifTags.Base.Orientation, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im) or im
    return im


def to_rgb8(im: Image.Image) -> np.ndarray:
    """``im`` (any PIL mode, already upright) as an (H, W, 3) uint8 RGB array.

    The scale of a high-bit-depth image is chosen by its mode, never by its content, so that one bright pixel
    cannot change every other pixel:

    * ``I;16*`` (16-bit PNG / TIFF / PGM) and ``I`` (32-bit integer; what Pillow gives 16-bit grey data in
      some formats and after some operations): 16-bit samples, 0-65535 -> 0-255, values outside clipped.
    * ``F`` (32-bit float): 0-1 when nearly all (99 %) finite samples lie within [0, 1], else 0-255 (Pillow's
      own float scale, e.g. ``L`` converted to ``F``); clipped to the range either way, NaN -> 0. A few stray
      samples above 1 (an HDR highlight) do not switch a 0-1 image to the 0-255 scale.

    Grey modes are repeated to three channels. Transparency (an alpha channel or a palette / grey / RGB
    transparent colour) is composited on white. Everything else is Pillow's ``convert("RGB")`` (CMYK, YCbCr,
    palettes, 1-bit), which for RGB and L images is the identity / channel repetition.
    """
    mode = im.mode
    keyed = mode in _KEYED_MODES and "transparency" in im.info
    if mode == "RGB" and not keyed:
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = arr.astype(np.float64)
            finite = arr[np.isfinite(arr)]
            top = 1.0 if finite.size == 0 or np.quantile(finite, 0.99) <= 1.0 else 255.0
            gray = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, top) * (255.0 / top)
        else:
            gray = np.clip(arr.astype(np.int64), 0, 65535) * (255.0 / 65535.0)
        gray = np.round(gray).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or keyed:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def image_array(im: Image.Image, mode: str = "RGB") -> np.ndarray:
    """``im`` upright (:func:`upright`) and converted by :func:`to_rgb8`: (H, W, 3) uint8 for ``mode`` 'RGB',
    (H, W) uint8 ITU-R 601 luma (PIL's 'L' of that RGB) for 'L'."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    im = upright(im)
    if mode == "L" and im.mode == "L" and "transparency" not in im.info:
        return np.asarray(im, dtype=np.uint8).copy()  # what the detour through RGB gives too (R = G = B -> L)
    rgb = to_rgb8(im)
    if mode == "RGB":
        return rgb
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8).copy()


def read_image(path: str | Path | IO[bytes], mode: str = "RGB", what: str = "image") -> np.ndarray:
    """``path`` as a uint8 array by :func:`image_array` ('RGB': (H, W, 3); 'L': (H, W), ITU-R 601 luma).

    An unreadable file is a ValueError naming it."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    try:
        with Image.open(path) as im:
            return image_array(im, mode)
    except Exception as exc:  # OSError, a decompression bomb, malformed EXIF, a plugin's own errors: name the file
        raise ValueError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from None


def pad_edges(image: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """``image`` (H, W, C) with a margin of ``fraction`` of its longer side (at least 1 px) on every side, edge
    pixels repeated: the detector's retry framing for faces that fill the frame. Returns (padded, margin)."""
    pad = max(1, round(fraction * max(image.shape[:2])))
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge"), pad
