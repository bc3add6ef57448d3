"""Response and request models (pydantic v2), shared by the HTTP routes and ``fmpn predict``."""

from __future__ import annotations

import base64
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field

from fmpn.inference import LANDMARK_NAMES, FacePrediction, ImagePrediction
from fmpn.video import Frame, Track, longest_first

# detect=false classifies the centre square of the image; wider or taller than this gets a warning.
SQUARE_ENOUGH = 1.2
# No face found in an image no larger than this: most likely a face crop that fills the frame (MTCNN misses 17 %
# of FER2013's 48 px crops); the response says how to classify it whole.
CROP_HINT_MAX_SIDE = 256
# A face with this share of its aligned crop outside the image is named in a warning (FaceResult.crop_outside).
EDGE_WARNING = 0.25


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. too_many_pixels")
    message: str = Field(description="what went wrong, naming the limit where one applies")
    request_id: str | None = Field(
        None, description="the request's X-Request-ID (the caller's, or a fresh one), also in the service's log"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(described: dict[int, str]) -> dict[int, dict[str, Any]]:
    """A route's error answers for its OpenAPI ``responses``: each status with the JSON error body and what it means."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in described.items()}


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class Point(BaseModel):
    x: float
    y: float


class Landmarks(BaseModel):
    left_eye: Point
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point


class MaskImage(BaseModel):
    format: str = "png"
    encoding: str = "base64"
    width: int
    height: int
    data: str = Field(description="8-bit grey PNG, base64; 255 = mask value 1.0")


class FaceResult(BaseModel):
    index: int = Field(description="0-based, faces ordered largest first")
    box: Box = Field(description="face box in image pixels (after EXIF rotation)")
    score: float | None = Field(description="detection score; null when the image was classified whole (detect=false)")
    landmarks: Landmarks | None = Field(description="MTCNN's five points; null when detect=false")
    label: str = Field(description="the most probable class")
    label_score: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every class, in the model's order; sums to 1")
    mask: MaskImage | None = Field(
        None,
        description="the generator's facial-motion prior at the aligned-crop size (where it expects the face to "
        "move; for the released model nearly one map for every face and class: README, Results so far); "
        "null with ?mask=false",
    )
    mask_url: str | None = None
    crop_outside: float = Field(
        0.0,
        description="share of the face's aligned crop (what the model sees) outside the image, filled by repeating "
        f"its edge pixels: a face cut by the photo's edge; from {EDGE_WARNING} on, a warning says so",
    )


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    name: str
    profile: str
    version: str


class PredictionResponse(BaseModel):
    id: str | None = Field(description="result id, for the overlay and mask GETs")
    image: ImageSize
    model: ModelRef
    faces: list[FaceResult]
    faces_detected: int = Field(description="faces found; more than len(faces) when the max_faces limit applied")
    faces_truncated: bool
    detected: bool = Field(
        True, description="false: detect=false, the whole image was classified as one face crop (box = the image)"
    )
    warnings: list[str] = Field(default_factory=list)
    overlay_url: str | None = None
    expires_at: float | None = Field(None, description="unix time after which the result is gone")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class BatchItem(BaseModel):
    index: int
    result: PredictionResponse | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class PredictionRequest(BaseModel):
    image: str = Field(description="the image file, base64 (a data: URL is accepted)")


class BatchPredictionRequest(BaseModel):
    images: list[str] = Field(description="image files, base64 (data: URLs are accepted)")


class VideoFace(FaceResult):
    track: int = Field(description="the face's track: the same id in every frame the same face is in")


class VideoFrameResult(BaseModel):
    frame: int = Field(description="0-based frame number in the video")
    time_s: float = Field(description="the frame's time in the video, seconds")
    faces: list[VideoFace]
    faces_detected: int
    detection: Literal["whole", "near"] = Field(
        description="whole: the faces were looked for in the whole frame; near: only near the faces of the frame "
        "before (`detect_every` above 1), where a face that just entered is not found yet"
    )


class TrackResult(BaseModel):
    id: int
    first_frame: int
    last_frame: int
    start_s: float
    end_s: float
    frames: int = Field(description="analysed frames the face is in")
    label: str = Field(description="the most probable class of the averaged probabilities")
    label_score: float
    probabilities: dict[str, float] = Field(description="the face's probabilities averaged over its frames")


class VideoMeta(BaseModel):
    width: int
    height: int
    fps: float = Field(description="the video's frame rate; 0 when its container does not say")
    frames: int = Field(description="the video's frame count as its container says; 0 when unknown")
    duration_s: float


class VideoResponse(BaseModel):
    video: VideoMeta
    model: ModelRef
    sampled_fps: float | None = Field(description="frames analysed a second of video; null: every frame")
    start_s: float = Field(description="the analysed stretch of the video from this time on, seconds (`start`)")
    end_s: float | None = Field(description="... up to this time, excluded (`end`); null: the video's end")
    frames_analysed: int
    frames_truncated: bool = Field(
        description="true when max_frames or the decoding limit stopped the analysis before the video (or the "
        "window) ended"
    )
    frames: list[VideoFrameResult]
    tracks: list[TrackResult] = Field(description="one per face followed through the frames, longest first")
    warnings: list[str] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    name: str
    version: str
    profile: str
    classes: list[str]
    input_size: int
    load_size: int
    mask_size: int
    backbone: str
    template: list[list[float]]
    weights_file: str
    weights_sha256: str
    device: str
    dtype: str
    flip_average: bool = Field(description="probabilities average each face and its mirror image")
    compiled: bool = Field(description="the model runs compiled with frozen weights (FMPN_COMPILE)")
    loaded_at: float | None = Field(None, description="when this model started serving (Unix time)")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ReloadResponse(BaseModel):
    reloaded: bool = Field(description="false: the file's SHA-256 is the serving model's (nothing loaded; ?force=true)")
    previous_version: str | None = Field(description="the version that served before (null after a failed start)")
    model: ModelInfo = Field(description="the model new requests get now")
    seconds: float = Field(description="time to load and warm up the new model")


def mask_png(mask: np.ndarray) -> bytes:
    """(S, S) float mask in [0, 1] -> 8-bit grey PNG."""
    img = np.clip(np.rint(np.asarray(mask, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 never fails on a uint8 2-D array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def face_result(
    index: int,
    face: FacePrediction,
    classes: list[str],
    image: tuple[int, int],
    *,
    include_mask: bool,
    mask_url: str | None = None,
) -> FaceResult:
    """One face of a ``image`` (width, height) photo."""
    probs = [float(p) for p in face.probabilities]
    best = int(np.argmax(probs))
    mask = None
    if include_mask:
        h, w = face.mask.shape[:2]
        mask = MaskImage(width=w, height=h, data=base64.b64encode(mask_png(face.mask)).decode("ascii"))
    landmarks = None
    if face.landmarks is not None:
        pts = np.asarray(face.landmarks, dtype=float).reshape(5, 2)
        landmarks = Landmarks(
            **{n: Point(x=float(x), y=float(y)) for n, (x, y) in zip(LANDMARK_NAMES, pts, strict=True)}
        )
    return FaceResult(
        index=index,
        box=Box(x1=face.box[0], y1=face.box[1], x2=face.box[2], y2=face.box[3]),
        score=face.score,
        landmarks=landmarks,
        label=classes[best],
        label_score=probs[best],
        probabilities=dict(zip(classes, probs, strict=True)),
        mask=mask,
        mask_url=mask_url,
        crop_outside=round(face.outside(*image), 3),
    )


def prediction_response(
    result_id: str | None,
    prediction: ImagePrediction,
    model: dict[str, Any],
    *,
    include_mask: bool,
    max_faces: int | None,
    warnings: list[str] | None = None,
    base_url: str | None = None,
    expires_at: float | None = None,
    timings_ms: dict[str, float] | None = None,
) -> PredictionResponse:
    notes = list(warnings or [])
    if prediction.faces_truncated:
        notes.append(
            f"{prediction.faces_detected} faces found; only the largest {len(prediction.faces)} were classified "
            f"(max_faces={max_faces})"
        )
    w, h = prediction.width, prediction.height
    if not prediction.detected and max(w, h) > SQUARE_ENOUGH * min(w, h):
        notes.append(
            f"detect=false: the image is {w}x{h}, not a square face crop; only its centre square was classified "
            "as one face"
        )
    if prediction.detected and prediction.faces_detected == 0 and max(w, h) <= CROP_HINT_MAX_SIDE:
        notes.append(
            f"no face found in this {w}x{h} image; if it is already a face crop, send it with detect=false "
            "(fmpn predict --no-detect) to classify it whole"
        )
    faces = [
        face_result(
            i,
            f,
            model["classes"],
            (w, h),
            include_mask=include_mask,
            mask_url=f"{base_url}/faces/{i}/mask.png" if base_url else None,
        )
        for i, f in enumerate(prediction.faces)
    ]
    cut = [f"{f.index} ({f.crop_outside:.0%})" for f in faces if f.crop_outside >= EDGE_WARNING]
    if cut:
        notes.append(
            f"face(s) {', '.join(cut)} cut by the image's edge: that share of the aligned crop lies outside the "
            "image and was filled by repeating edge pixels; their expressions are less reliable"
        )
    return PredictionResponse(
        id=result_id,
        image=ImageSize(width=prediction.width, height=prediction.height),
        model=ModelRef(name=model["name"], profile=model["profile"], version=model["version"]),
        faces=faces,
        faces_detected=prediction.faces_detected,
        faces_truncated=prediction.faces_truncated,
        detected=prediction.detected,
        warnings=notes,
        overlay_url=f"{base_url}/overlay.png" if base_url else None,
        expires_at=expires_at,
        timings_ms={k: round(v, 2) for k, v in (timings_ms or {}).items()},
    )


def video_frame_result(
    frame: Frame, prediction: ImagePrediction, tracks: list[int], classes: list[str], *, include_mask: bool
) -> VideoFrameResult:
    size = (prediction.width, prediction.height)
    faces = [
        VideoFace(**face_result(i, f, classes, size, include_mask=include_mask).model_dump(), track=t)
        for i, (f, t) in enumerate(zip(prediction.faces, tracks, strict=True))
    ]
    return VideoFrameResult(
        frame=frame.index,
        time_s=round(frame.time_s, 4),
        faces=faces,
        faces_detected=prediction.faces_detected,
        detection="whole" if prediction.whole_frame else "near",
    )


def track_results(tracks: list[Track], classes: list[str]) -> list[TrackResult]:
    """Longest first (then earliest): the people who were in the clip longest lead."""
    results = []
    for track in longest_first(tracks):
        probs = [float(p) for p in track.probabilities]
        best = int(np.argmax(probs))
        results.append(
            TrackResult(
                id=track.id,
                first_frame=track.first_frame,
                last_frame=track.last_frame,
                start_s=round(track.first_time_s, 4),
                end_s=round(track.last_time_s, 4),
                frames=track.frames,
                label=classes[best],
                label_score=probs[best],
                probabilities=dict(zip(classes, probs, strict=True)),
            )
        )
    return results
