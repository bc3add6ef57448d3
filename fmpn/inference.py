"""In-process inference: photo -> faces (MTCNN) -> 5-point alignment -> FMPN -> probabilities + motion masks.

This is what the HTTP service, ``fmpn predict`` and the benchmarks run. Pre-processing follows the
training contract exactly: each face is aligned with :func:`fmpn.align.align_face` to a
``profile.load_size`` crop using the checkpoint's template (or ``DEFAULT_TEMPLATE``), centre-cropped
to ``profile.image_size`` (torchvision's ``CenterCrop`` offset), scaled to float RGB in [0, 1] with no
mean/std normalisation and fed to the model; probabilities are ``softmax(logits)``.

All faces of all images passed to :meth:`Predictor.predict` go through the model in one forward pass
(chunked at ``model_batch``). By default the model runs in float16 on CUDA and in bf16 autocast on CPUs
with native bf16 instructions (:mod:`fmpn.precision`), float32 elsewhere. With ``compile`` the model is
also compiled by inductor with frozen weights (about twice as fast at small batches on a CPU): on a CPU ahead
of time by child processes and kept on disk (:mod:`fmpn.aot`), on CUDA in process, each shape on first use
(:func:`fmpn.models.fuse.compile_frozen`); faces then go through it in chunks padded to one of
``COMPILED_BATCHES``.

Nothing here imports ``app/`` or ``training/``.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fmpn.align import DEFAULT_TEMPLATE, align_face, invert_affine, similarity_transform
from fmpn.aot import compile_model
from fmpn.checkpoint import Checkpoint, load_checkpoint, released_weights
from fmpn.data.transforms import CENTRE, crop_box, resize_shorter
from fmpn.detect import Face, FaceDetector, face_from_resized
from fmpn.images import image_array, pad_edges
from fmpn.models import class_probabilities
from fmpn.models.fuse import compile_frozen, prepare_for_inference
from fmpn.precision import autocast, resolve_precision
from fmpn.video import DEFAULT_FPS, VideoPrediction, Window, container_format, predict_video

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# Formats the service accepts; Pillow can open more, but these are the ones photos come in.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")

# Below this image->crop scale a face is first shrunk with area interpolation, so the bilinear warp
# does not alias (a 2048 px portrait's face is ~10x larger than a 68 px crop).
_ANTIALIAS_BELOW = 0.8


# ----------------------------------------------------------------------------------------------
# Image decoding
# ----------------------------------------------------------------------------------------------


class ImageDecodeError(ValueError):
    """Bytes that cannot be used as a photo. ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, upright (EXIF orientation applied)
    format: str
    warnings: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def decode_image(data: bytes, max_pixels: int | None = None) -> DecodedImage:
    """Decode an uploaded photo to upright 8-bit RGB.

    Handles EXIF orientation, CMYK / YCbCr, 16-bit and float images, transparency (composited on
    white), palettes (:func:`fmpn.images.image_array`, the decoding training and the mask tools share)
    and animations (first frame only, with a warning). Dimensions are checked
    against ``max_pixels`` from the header, before any pixel is decoded (decompression bombs).
    """
    if not data:
        raise ImageDecodeError("empty_image", "the image is empty (0 bytes)")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        limit = f"the limit of {max_pixels} pixels (max_pixels)" if max_pixels else "Pillow's decompression-bomb limit"
        raise ImageDecodeError("too_many_pixels", f"image has too many pixels, over {limit}: {exc}") from None
    except UnidentifiedImageError:
        hint = ""
        if container_format(data[:12]) is not None:
            hint = "; it is a video: POST it to /v1/videos:predict (fmpn video FILE)"
        raise ImageDecodeError(
            "not_an_image",
            f"the data is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)}){hint}",
        ) from None
    except Exception as exc:  # Pillow's parsers raise anything on crafted headers
        raise ImageDecodeError("corrupt_image", f"the image header is corrupt: {type(exc).__name__}: {exc}") from None
    fmt = im.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise ImageDecodeError(
            "unsupported_image_format",
            f"image format {fmt} is not supported; supported formats: {', '.join(SUPPORTED_FORMATS)}",
        )
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt_image", f"the image has an invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels (max_pixels)",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Whether a second frame exists (its header read), not how many: counting walks every TIFF page, in time
            # that grows with the square of their number (80,000 1x1 pages: 34 s).
            several = bool(getattr(im, "is_animated", False))
            im.seek(0)
            im.load()
            rgb = image_array(im, "RGB")  # EXIF orientation applied; EXIF values of the wrong type raise TypeError
    except Exception as exc:  # truncated data, bad later frames, malformed EXIF: the upload's fault
        raise ImageDecodeError(
            "corrupt_image", f"the image data is truncated or corrupt: {type(exc).__name__}: {exc}"
        ) from None
    if several:
        notes.append("the image has several frames; only the first frame was used")
    return DecodedImage(rgb=rgb, format=fmt, warnings=notes)


def load_image_file(path: str | Path, max_pixels: int | None = None) -> DecodedImage:
    return decode_image(Path(path).read_bytes(), max_pixels=max_pixels)


def as_rgb(image: str | Path | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """One image as the (H, W, 3) uint8 RGB array :meth:`Predictor.predict` takes; a clear ValueError (or
    :class:`ImageDecodeError`, FileNotFoundError) for anything else."""
    if isinstance(image, (str, Path)):
        return load_image_file(image).rgb
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image)).rgb
    if isinstance(image, Image.Image):  # turned upright by its EXIF orientation, as a path or bytes would be
        try:
            return image_array(image, "RGB")
        except Exception as exc:  # a truncated file opened lazily, malformed EXIF
            raise ImageDecodeError(
                "corrupt_image", f"the image data is truncated or corrupt: {type(exc).__name__}: {exc}"
            ) from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (0-255), got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"an image array must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"an image array must not be empty, got shape {image.shape}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image)
    raise ValueError(
        f"an image must be a file path, the bytes of an image file, a PIL image or a uint8 array, "
        f"got {type(image).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class FacePrediction:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float | None  # detection score; None for a face crop classified whole (detect=False)
    landmarks: np.ndarray | None  # (5, 2) image pixels, LANDMARK_NAMES order; None when not detected
    probabilities: np.ndarray  # (C,) float, sums to 1
    mask: np.ndarray  # (S, S) float32 in (0, 1), S = profile.image_size (the aligned centre crop)
    matrix: np.ndarray  # (2, 3) image -> aligned load_size crop, as returned by align_face
    offset: int  # centre-crop offset: mask pixel (u, v) is crop pixel (u + offset, v + offset)
    classes: tuple[str, ...] = ()  # the model's class names, in the order of ``probabilities``

    @property
    def label_index(self) -> int:
        return int(np.argmax(self.probabilities))

    def outside(self, width: int, height: int) -> float:
        """The share of the model's input (the aligned centre crop) that lies outside the ``width`` x ``height``
        image: alignment fills it by repeating the edge pixels, so a face cut by the photo's edge is classified
        partly from an invented face. 0 for a face wholly inside; sampled on a 16 x 16 grid of pixel centres."""
        n, size = 16, self.mask.shape[0]
        steps = self.offset + (np.arange(n) + 0.5) * size / n - 0.5
        u, v = np.meshgrid(steps, steps)
        inverse = invert_affine(self.matrix)  # crop -> image
        x = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]
        y = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]
        out = (x < -0.5) | (x > width - 0.5) | (y < -0.5) | (y > height - 0.5)
        return float(out.mean())

    @property
    def label(self) -> str:
        """The most probable class's name."""
        return self.classes[self.label_index]

    @property
    def expressions(self) -> dict[str, float]:
        """Each class's probability by name."""
        return {c: float(p) for c, p in zip(self.classes, self.probabilities, strict=True)}

    @property
    def mask_matrix(self) -> np.ndarray:
        """(2, 3) image -> mask pixel coordinates (the align matrix composed with the centre crop)."""
        m = np.array(self.matrix, dtype=np.float64)
        m[:, 2] -= self.offset
        return m

    @property
    def mask_to_image(self) -> np.ndarray:
        """(2, 3) mask -> image matrix: ``cv2.warpAffine(mask, mask_to_image, (W, H))`` puts it on the photo."""
        return invert_affine(self.mask_matrix)


@dataclass
class ImagePrediction:
    width: int
    height: int
    faces: list[FacePrediction]
    faces_detected: int  # before the max_faces cut
    detected: bool = True  # False: the image was classified whole as one face crop (detect=False)
    # False: its faces were looked for only near those of a video's frame before (fmpn.video.FaceFollower)
    whole_frame: bool = True

    @property
    def faces_truncated(self) -> bool:
        return self.faces_detected > len(self.faces)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


# Faces per forward of a compiled model: each chunk is padded up to the next of these, so that only four shapes
# are ever compiled; more faces go through in chunks of the largest (as fast a face as eager batches of 32).
COMPILED_BATCHES = (1, 2, 4, 8)


# The model as the predictor calls it: a batch of faces -> (logits, masks); the module, or it compiled.
ModelFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


# FMPN_COMPILE's values as Predictor's ``compile`` takes them (None: decide from the device and a C++ compiler).
COMPILE_SETTINGS: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def cpp_compiler_found() -> bool:
    """Whether inductor can build CPU kernels here: ``$CXX`` or a g++ / clang++ on the PATH."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    return any(shutil.which(name) for name in names)


class Predictor:
    """Checkpoint + MTCNN detector; ``predict(images)`` returns every face's expression and mask.

    Not thread-safe: one thread at a time calls it (the service's batcher owns it).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device = "auto",
        *,
        precision: str = "auto",
        max_faces: int | None = None,
        detect_max_side: int | None = 1280,
        min_face_size: int = 20,
        min_face_score: float = 0.9,
        model_batch: int = 64,
        batch_detect: bool | None = None,
        flip_average: bool | None = None,
        retry_pad: float = 0.1,
        compile: bool | None = False,
        compile_cache: str | Path | None = None,
    ) -> None:
        """``weights`` None: the released file (``weights/`` of the checkout). ``compile``: run the model compiled
        with frozen weights (None: on a CPU with a C++ compiler); on a CPU compiled ahead of time by a child process
        into ``compile_cache`` (None: :func:`fmpn.aot.default_cache_dir`), loaded from there when already built.
        Should compiling fail, the model runs uncompiled, with one warning."""
        self.weights = released_weights() if weights is None else Path(weights)
        self.device = resolve_device(device)
        self.checkpoint: Checkpoint = load_checkpoint(self.weights)  # CheckpointError when missing/corrupt
        self.sha256 = self.checkpoint.sha256  # of the bytes loaded: the compiled model is built from the same
        self.profile = self.checkpoint.profile
        self.classes = list(self.checkpoint.classes)
        self.template = DEFAULT_TEMPLATE if self.checkpoint.template is None else self.checkpoint.template
        self.precision = resolve_precision(precision, self.device)  # float16: weights too; bfloat16: autocast
        self.dtype = torch.float16 if self.precision == "float16" else torch.float32
        # Average each face with its mirror image when the release asks for it (model card), or as told.
        self.flip_average = self.checkpoint.flip_average if flip_average is None else bool(flip_average)
        # Folded in float32, then cast: float16 weights (CUDA) or bf16 ones under bf16 autocast (fmpn.models.fuse).
        self.model = prepare_for_inference(self.checkpoint.build_model(), self.precision, self.device)
        if compile is None:
            compile = self.device.type == "cpu" and cpp_compiler_found()
        self.compiled: ModelFn | None = None
        if compile:
            self.compiled = self._compiled(compile_cache)
        self.detector = FaceDetector(self.device, min_face_size=min_face_size)
        self.max_faces = max_faces
        self.detect_max_side = detect_max_side
        self.min_face_score = min_face_score
        self.retry_pad = max(0.0, float(retry_pad))  # images with no face: detect again with a margin
        self.model_batch = max(1, int(model_batch))
        # MTCNN batches same-sized images; on CPU that is no faster than one by one, on CUDA it is.
        self.batch_detect = (self.device.type == "cuda") if batch_detect is None else bool(batch_detect)
        self.crop_offset = int(round((self.profile.load_size - self.profile.image_size) / 2.0))
        config = self.checkpoint.config or {}
        self.name = str(config.get("name") or self.weights.stem)
        self.version = str(config.get("version") or self.sha256[:12])
        self.warmed_up = False

    def _compiled(self, cache: str | Path | None) -> ModelFn | None:
        """The model compiled: on a CPU ahead of time, for the model batches of ``COMPILED_BATCHES`` faces (each
        doubled by its mirror image when flip-averaging), or None with a warning when that fails; elsewhere
        ``torch.compile``d, each shape on first use."""
        if self.device.type != "cpu":
            return compile_frozen(self.model)
        views = 2 if self.flip_average else 1
        batches = [b * views for b in COMPILED_BATCHES]
        try:
            folder = None if cache is None else Path(cache)
            return compile_model(self.weights, self.sha256, self.precision, batches, folder)
        except Exception as exc:  # no C++ compiler, a full disk, a timeout: served uncompiled, as before
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"compiling the model failed ({first}); it runs uncompiled", stacklevel=3)
            return None

    # -- description -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "profile": self.checkpoint.profile_name,
            "classes": list(self.classes),
            "input_size": self.profile.image_size,
            "load_size": self.profile.load_size,
            "mask_size": self.profile.image_size,
            "backbone": self.profile.backbone,
            "template": [list(map(float, p)) for p in self.template],
            "weights_file": self.weights.name,
            "weights_sha256": self.sha256,
            "device": str(self.device),
            "dtype": self.precision,
            "flip_average": self.flip_average,
            "compiled": self.compiled is not None,
        }

    # -- stages ------------------------------------------------------------------------------

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces of each (H, W, 3) uint8 RGB image, largest first, score >= min_face_score.

        Images larger than ``detect_max_side`` are detected on an area-downscaled copy; boxes and
        landmarks are returned in the original image's pixels.
        """
        smalls: list[np.ndarray] = []
        scales: list[tuple[float, float] | None] = []  # (sx, sy): the copy's size over the image's, per axis
        for image in images:
            h, w = image.shape[:2]
            scale = None
            if self.detect_max_side and max(h, w) > self.detect_max_side:
                s = self.detect_max_side / max(h, w)
                nw, nh = max(1, round(w * s)), max(1, round(h * s))
                image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
                scale = (nw / w, nh / h)  # each side rounds on its own: the exact scales differ a little
            smalls.append(np.ascontiguousarray(image))
            scales.append(scale)
        found: list[list[Face] | None] = [None] * len(images)
        if self.batch_detect and len(images) > 1:
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, im in enumerate(smalls):
                groups.setdefault(im.shape, []).append(i)
            for idx in groups.values():
                if len(idx) > 1:
                    for i, faces in zip(idx, self.detector.detect_same_size([smalls[i] for i in idx]), strict=True):
                        found[i] = faces
        for i, im in enumerate(smalls):
            if found[i] is None:
                found[i] = self.detector.detect(im)
        out: list[list[Face]] = []
        for im, faces, s in zip(smalls, found, scales, strict=True):
            kept = [f for f in faces or [] if f.score >= self.min_face_score]
            if not kept and self.retry_pad > 0:
                kept = self._detect_padded(im)
            if s is not None:  # boxes are edges (x / s), landmarks pixel centres ((x + 0.5) / s - 0.5)
                kept = [face_from_resized(f, *s) for f in kept]
            kept.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
            out.append(kept)
        return out

    def detect_near(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[Face]:
        """The faces of an (H, W, 3) uint8 RGB image near ``boxes`` (x1, y1, x2, y2 in its pixels), as
        :meth:`detect` gives them: largest first, score >= min_face_score. A video's next frame, followed from its
        faces in the frame before, at a fraction of a whole-frame detection's cost (``fmpn.video``)."""
        return [f for f in self.detector.detect_near(image, boxes) if f.score >= self.min_face_score]

    def _detect_padded(self, image: np.ndarray) -> list[Face]:
        """Detect again on the image padded by ``retry_pad`` of its longer side, edge pixels repeated.

        MTCNN misses faces that fill the frame to its edges (a face crop: 17 % of FER2013's validation
        images); with a margin it finds them. Boxes come back in the image's pixels, clipped to it; a
        detection centred in the margin is dropped. The alignment repeats edge pixels too, so the face's
        crop is the one the padded image gives.
        """
        h, w = image.shape[:2]
        padded, pad = pad_edges(image, self.retry_pad)
        kept: list[Face] = []
        for f in self.detector.detect(padded):
            x1, y1, x2, y2 = (v - pad for v in f.box)
            if f.score < self.min_face_score or not (0 <= (x1 + x2) / 2 < w and 0 <= (y1 + y2) / 2 < h):
                continue
            box = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
            kept.append(Face(box, f.score, f.landmarks - pad))
        return kept

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One face -> (centre-cropped (S, S, 3) uint8 crop, 2x3 image -> load_size crop matrix)."""
        crop, matrix = self.align_load_size(image, landmarks)
        o, s = self.crop_offset, self.profile.image_size
        return np.ascontiguousarray(crop[o : o + s, o : o + s]), matrix

    def align_load_size(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One face -> (the whole (L, L, 3) aligned crop before the centre crop, its 2x3 matrix): what
        ``fmpn crops`` writes, so that training draws its random crops from the service's framing."""
        size = self.profile.load_size
        lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        direct = similarity_transform(lm, np.asarray(self.template, dtype=np.float64) * size)
        scale = math.sqrt(abs(np.linalg.det(direct[:, :2])))
        crop = matrix = None
        if scale < _ANTIALIAS_BELOW:
            crop, matrix = self._align_antialiased(image, lm, direct, scale)
        if crop is None:
            crop, matrix = align_face(image, lm, size, self.template)
        return crop, matrix

    def _align_antialiased(
        self, image: np.ndarray, lm: np.ndarray, direct: np.ndarray, scale: float
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Shrink the face's region with area interpolation to ~crop resolution, then align_face on it."""
        size = self.profile.load_size
        h, w = image.shape[:2]
        inv = invert_affine(direct)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inv.T
        pad = 4.0 / scale
        x0 = int(max(0, math.floor(corners[:, 0].min() - pad)))
        y0 = int(max(0, math.floor(corners[:, 1].min() - pad)))
        x1 = int(min(w, math.ceil(corners[:, 0].max() + pad)))
        y1 = int(min(h, math.ceil(corners[:, 1].max() + pad)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None, None
        nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        fx, fy = nw / (x1 - x0), nh / (y1 - y0)
        roi = cv2.resize(image[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_AREA)
        # cv2.resize maps source pixel x to fx * (x + 0.5) - 0.5 in the result.
        shrink = np.array([[fx, 0.0, fx * (0.5 - x0) - 0.5], [0.0, fy, fy * (0.5 - y0) - 0.5]])
        lm_small = lm @ shrink[:, :2].T + shrink[:, 2]
        crop, m_small = align_face(roi, lm_small, size, self.template)
        matrix = np.hstack([m_small[:, :2] @ shrink[:, :2], (m_small[:, :2] @ shrink[:, 2] + m_small[:, 2])[:, None]])
        return crop, matrix

    def crop_whole(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A face crop as given -> (centre-cropped (S, S, 3) uint8 crop, 2x3 image -> load_size crop matrix).

        Exactly the evaluation transform of training (``PairedTransform(train=False)``): shorter side resized
        to ``load_size`` (PIL bilinear), centre ``image_size`` crop. So ``detect=False`` on a dataset's crop
        gives what ``fmpn evaluate`` scores, and no detector can miss a face that fills the whole image.
        """
        # Only the centre square is classified; an extreme aspect ratio would make the resized copy huge (a
        # 1 x 40M px image: 68 x 2.7e9), so at most twice the shorter side is kept along the longer one.
        keep = 2 * min(image.shape[:2])
        y0, x0 = max(0, (image.shape[0] - keep) // 2), max(0, (image.shape[1] - keep) // 2)
        image = image[y0 : y0 + keep, x0 : x0 + keep]
        h, w = image.shape[:2]
        resized = np.asarray(resize_shorter(Image.fromarray(image), self.profile.load_size))
        rh, rw = resized.shape[:2]
        s = self.profile.image_size
        top, left = crop_box(rh, rw, s, CENTRE)
        crop = np.ascontiguousarray(resized[top : top + s, left : left + s])
        # PIL maps source pixel centres x + 0.5 to (x + 0.5) * rw / w; the matrix ends in load-size crop
        # coordinates, so that FacePrediction.offset (the square centre crop) still leads to mask pixels.
        fx, fy = rw / w, rh / h
        o = self.crop_offset
        matrix = np.array(
            [[fx, 0.0, 0.5 * fx - 0.5 - left + o - fx * x0], [0.0, fy, 0.5 * fy - 0.5 - top + o - fy * y0]]
        )
        return crop, matrix

    @torch.inference_mode()
    def classify(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 RGB crops -> (probabilities (N, C) float64, masks (N, S, S) float32)."""
        n = len(crops)
        if n == 0:
            s = self.profile.image_size
            return np.zeros((0, len(self.classes))), np.zeros((0, s, s), dtype=np.float32)
        probs, masks = [], []
        step = min(self.model_batch, COMPILED_BATCHES[-1]) if self.compiled is not None else self.model_batch
        for start in range(0, n, step):
            chunk = torch.from_numpy(np.ascontiguousarray(crops[start : start + step]))
            x = chunk.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
            p, mask = self._forward(x)
            probs.append(p.double().cpu())
            masks.append(mask.float()[:, 0].cpu())
        return torch.cat(probs).numpy(), torch.cat(masks).numpy()

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities and masks of a chunk of faces: compiled (padded to a compiled size) when it can be."""
        if self.compiled is not None:
            n = len(x)
            size = next(b for b in COMPILED_BATCHES if b >= n)
            padded = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))]) if size > n else x
            try:
                with autocast(self.precision, self.device):
                    p, mask = class_probabilities(
                        self.compiled, padded.contiguous(memory_format=torch.channels_last), self.flip_average
                    )
                return p[:n], (None if mask is None else mask[:n])
            except Exception as exc:  # CUDA compiles on first use: a broken toolchain shows here, as any of many types
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                warnings.warn(f"the compiled model failed ({first}); it runs uncompiled from now on", stacklevel=2)
                self.compiled = None
        with autocast(self.precision, self.device):
            return class_probabilities(self.model, x, self.flip_average)

    # -- the whole pipeline --------------------------------------------------------------------

    def predict(
        self,
        images: list[np.ndarray],
        max_faces: int | Sequence[int | None] | None = None,
        timings: dict[str, float] | None = None,
        detect: bool | Sequence[bool] = True,
        faces: Sequence[list[Face] | None] | None = None,
    ) -> list[ImagePrediction]:
        """Faces with expression probabilities and motion masks, for each (H, W, 3) uint8 RGB image.

        Faces are ordered largest first; with ``max_faces`` (or the predictor's default) only the
        largest N are classified and ``faces_detected`` says how many there were (``max_faces`` may
        also be a list, one limit per image). ``detect`` False (or False in a per-image list): the image
        is already one face crop, framed like the training crops, and is classified whole (``crop_whole``).
        ``faces``: an image's faces found already (:meth:`detect_near`; None in the list: detect them here).
        All faces of all images go through the model in one forward. ``timings`` (if given) receives the
        seconds spent in ``detect``, ``align`` and ``model``.
        """
        for k, image in enumerate(images):  # the array contract, said plainly (torch's errors would not)
            if not (
                isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            ):
                what = (
                    f"{image.dtype} array of shape {image.shape}"
                    if isinstance(image, np.ndarray)
                    else type(image).__name__
                )
                raise ValueError(
                    f"image {k}: predict takes (H, W, 3) uint8 RGB arrays, got a {what} (predict_images takes files, "
                    "grey arrays and PIL images)"
                )
        limits = self._per_image("max_faces", max_faces, len(images))
        limits = [self.max_faces if n is None else n for n in limits]
        detects = [bool(d) for d in self._per_image("detect", detect, len(images))]
        given = [None] * len(images) if faces is None else list(faces)
        if len(given) != len(images):
            raise ValueError(f"{len(given)} faces values for {len(images)} images")
        t0 = time.perf_counter()
        todo = [d and g is None for d, g in zip(detects, given, strict=True)]
        found = iter(self.detect([im for im, t in zip(images, todo, strict=True) if t]))
        detected = [next(found) if t else (g if d else None) for d, g, t in zip(detects, given, todo, strict=True)]
        t1 = time.perf_counter()
        crops: list[np.ndarray] = []
        owners: list[tuple[int, Face | None, np.ndarray]] = []
        for i, (image, faces, limit) in enumerate(zip(images, detected, limits, strict=True)):
            if faces is None:
                crop, matrix = self.crop_whole(image)
                crops.append(crop)
                owners.append((i, None, matrix))
                continue
            keep = faces if limit is None else faces[: max(0, limit)]
            for face in keep:
                crop, matrix = self.align(image, face.landmarks)
                crops.append(crop)
                owners.append((i, face, matrix))
        t2 = time.perf_counter()
        s = self.profile.image_size
        stacked = np.stack(crops) if crops else np.zeros((0, s, s, 3), dtype=np.uint8)
        probs, masks = self.classify(stacked)
        t3 = time.perf_counter()
        results = [
            ImagePrediction(
                width=int(im.shape[1]),
                height=int(im.shape[0]),
                faces=[],
                faces_detected=1 if faces is None else len(faces),
                detected=faces is not None,
            )
            for im, faces in zip(images, detected, strict=True)
        ]
        for k, (i, face, matrix) in enumerate(owners):
            h, w = images[i].shape[:2]
            results[i].faces.append(
                FacePrediction(
                    box=(0.0, 0.0, float(w), float(h)) if face is None else tuple(float(v) for v in face.box),
                    score=None if face is None else float(face.score),
                    landmarks=None if face is None else np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2),
                    probabilities=probs[k],
                    mask=masks[k],
                    matrix=np.asarray(matrix, dtype=np.float64),
                    offset=self.crop_offset,
                    classes=tuple(self.classes),
                )
            )
        if timings is not None:
            timings["detect"] = timings.get("detect", 0.0) + (t1 - t0)
            timings["align"] = timings.get("align", 0.0) + (t2 - t1)
            timings["model"] = timings.get("model", 0.0) + (t3 - t2)
            timings["faces"] = timings.get("faces", 0) + len(crops)
        return results

    def predict_images(
        self,
        images: Sequence[str | Path | bytes | Image.Image | np.ndarray],
        max_faces: int | Sequence[int | None] | None = None,
        detect: bool | Sequence[bool] = True,
    ) -> list[ImagePrediction]:
        """:meth:`predict` for images in any of the forms a library user has them: file paths, the bytes of an
        image file (decoded as the service decodes uploads, EXIF orientation included), PIL images, or uint8
        arrays (H, W, 3) RGB or (H, W) grey. Each face has its ``label`` and ``expressions`` by class name."""
        return self.predict([as_rgb(im) for im in images], max_faces=max_faces, detect=detect)

    def predict_video(
        self,
        path: str | Path,
        fps: float | None = DEFAULT_FPS,
        max_frames: int | None = None,
        detect_every: int = 1,
        window: Window | None = None,
    ) -> VideoPrediction:
        """The faces of a video's frames sampled at ``fps`` a second (None: every frame), each with a track id, and
        the tracks with their probabilities averaged over the frames (``fmpn.video.predict_video``; ``detect_every``:
        :class:`fmpn.video.FaceFollower`; ``window``: a stretch of it, :class:`fmpn.video.Window`). A file that
        cannot be read raises ``VideoDecodeError`` with the reason."""
        return predict_video(self, path, fps, max_frames, detect_every, window=window)

    @staticmethod
    def _per_image(name: str, value: Any, n: int) -> list[Any]:
        """One option for every image, or a list with one per image."""
        if value is None or isinstance(value, (bool, int, np.integer, np.bool_)) or np.ndim(value) == 0:
            return [value] * n
        values = list(value)
        if len(values) != n:
            raise ValueError(f"{len(values)} {name} values for {n} images")
        return values

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 4)) -> None:
        """Run the detector and the model once on synthetic input, so the first request is not slow."""
        rng = np.random.default_rng(0)
        self.detect([rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)])
        s = self.profile.image_size
        for b in COMPILED_BATCHES if self.compiled is not None else batch_sizes:  # compiled: each shape it has
            self.classify(rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmed_up = True
