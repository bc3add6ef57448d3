"""POST /v1/videos:predict: a video's sampled frames, their faces, and each face followed through the clip."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.disconnect import until_disconnected
from app.errors import ApiError, error_body
from app.routes.predictions import MAX_FACES_QUERY
from app.schemas import VideoResponse, error_responses
from app.upload import VIDEO_TYPES, read_video
from app.video import json_line
from fmpn.video import Window

NDJSON = "application/x-ndjson"

router = APIRouter(tags=["videos"])

_ERRORS = error_responses(
    {
        400: "empty body, a video that cannot be decoded (corrupt, truncated, unknown codec), a start at or past "
        "its end (start_past_end), or a window between two frames (empty_window)",
        401: "missing or wrong API key (when one is configured)",
        403: "video uploads are turned off (FMPN_VIDEOS=false)",
        413: "body over max_video_bytes, frames over max_pixels, or a start past the frames decoded per request "
        "(decode_limit)",
        415: "unsupported content type or container (MP4/MOV, WebM/MKV, AVI)",
        422: "invalid parameters (an end not after start among them)",
        429: "rate limit exceeded (Retry-After)",
        500: "inference failed on a frame (the error is logged; the service goes on)",
        501: "video uploads need Linux (an in-memory file for FFmpeg)",
        503: "not ready, or the queue stayed full (Retry-After)",
    }
)

_VIDEO_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"video": {"type": "string", "format": "binary"}},
                "required": ["video"],
            }
        },
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(VIDEO_TYPES)},
    },
}


@router.post(
    "/v1/videos:predict",
    response_model=VideoResponse,
    summary="Predict the expressions of the faces in a video, frame by frame and per face track",
    description=(
        "Send the video file as the body (`video/mp4`, `video/webm`, ...) or as a multipart upload (field "
        "`video`); MP4/MOV, WebM/MKV and AVI containers, at most `max_video_bytes`. Frames are sampled at `fps` "
        "a second (default `video_fps`), at most `max_frames` of them (capped by `max_video_frames`), and go "
        "through the same pipeline as photos. Each face carries a `track` id, the same in every frame the same "
        "face is in; `tracks` gives each face's probabilities averaged over its frames. Nothing is stored: the "
        "video is held in memory while it is analysed. With `Accept: application/x-ndjson` the answer streams as "
        'JSON lines while the frames are analysed: `{"type": "video", ...}` (the `video`, `model`, `sampled_fps`, '
        '`start_s` and `end_s` fields), one `{"type": "frame", ...}` per frame, then `{"type": "summary", ...}` (the '
        'remaining fields), or `{"type": "error", "status": 503, "error": {...}}` as the last line if the analysis '
        "fails midway (`status`: the HTTP status the error would have had before the stream began)."
    ),
    responses={
        200: {"content": {NDJSON: {"schema": {"type": "string", "description": "JSON lines, one object a line"}}}},
        **_ERRORS,
    },
    openapi_extra={"requestBody": _VIDEO_BODY},
)
async def predict_video(
    request: Request,
    fps: float | None = Query(None, gt=0, le=120, description="frames analysed a second of video (default video_fps)"),
    max_frames: int | None = Query(
        None, ge=1, description="analyse at most this many frames; capped by max_video_frames"
    ),
    detect_every: int | None = Query(
        None,
        ge=1,
        le=100,
        description="detect faces in the whole frame every N sampled frames, and in between only near the faces of "
        "the frame before (a fraction of the time; a face that enters is found at the next whole-frame detection); "
        "default video_detect_every (1: every frame)",
    ),
    start: float = Query(0.0, ge=0, description="analyse from this time on, seconds of the video"),
    end: float | None = Query(
        None,
        gt=0,
        description="... up to this time, excluded (default: the video's end). Windows end to end (start=0&end=60, "
        "start=60&end=120, ...) analyse a video longer than max_video_frames, frames numbered as in the whole video",
    ),
    mask: bool = Query(False, description="include each face's motion mask as base64 PNG (large for a video)"),
    max_faces: int | None = MAX_FACES_QUERY,
) -> Response:
    service = request.app.state.service
    settings = request.app.state.settings
    if not settings.videos:
        raise ApiError(403, "videos_disabled", "video uploads are turned off on this service (FMPN_VIDEOS=false)")
    try:
        window = Window(start, end)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    service.require_ready()
    data = await read_video(request, settings.max_video_bytes)
    stream = NDJSON in request.headers.get("accept", "")
    events = service.video_frames(
        data,
        fps=settings.video_fps if fps is None else fps,
        detect_every=settings.video_detect_every if detect_every is None else detect_every,
        max_frames=max_frames,
        include_mask=mask,
        max_faces=max_faces,
        keep_frames=not stream,
        window=window,
    )
    try:
        analysis = await anext(events)  # a video that cannot be read is an error status, before any line
    except BaseException:
        await events.aclose()
        raise
    if not stream:

        async def every_frame() -> None:
            async for _ in events:
                pass

        try:
            await until_disconnected(request, every_frame())
        finally:
            await events.aclose()  # the decoder and the in-memory file, also when the client has gone
        return JSONResponse(analysis.response().model_dump(mode="json"))

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield json_line("video", analysis.head())
            async for frame in events:
                yield json_line("frame", frame)
            yield json_line("summary", analysis.summary())
        except ApiError as exc:  # the 200 is sent: the stream ends with the error, and the status it would have had
            yield json_line("error", {"status": exc.status, **error_body(exc.code, exc.message)})
        finally:
            await events.aclose()

    return StreamingResponse(lines(), media_type=NDJSON)
