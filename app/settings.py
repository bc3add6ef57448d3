"""Service settings, read from the environment (prefix ``FMPN_``, e.g. ``FMPN_WEIGHTS``) or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fmpn.checkpoint import released_weights
from fmpn.precision import PRECISIONS
from fmpn.video import DEFAULT_FPS

DEFAULT_WEIGHTS = released_weights()  # the checkout's or the installed package's file; FMPN_WEIGHTS names another


class Settings(BaseSettings):
    # env_ignore_empty: `FMPN_TORCH_THREADS=` (an uncommented example line) means the default, not a bad integer.
    model_config = SettingsConfigDict(env_prefix="FMPN_", env_file=".env", extra="ignore", env_ignore_empty=True)

    # model
    weights: Path = Field(DEFAULT_WEIGHTS, description="checkpoint file (.safetensors)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "auto", description="auto: float16 on CUDA, bf16 autocast on CPUs with native bf16, else float32"
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    flip_average: bool | None = Field(
        None, description="average each face with its mirror image; default: as the weights' model card says"
    )
    warmup: bool = Field(True, description="run the detector and model once before /readyz says ready")
    reload_poll_s: float = Field(
        0.0,
        ge=0.0,
        description="look at the weights file every this many seconds and load it again when it changed (a new "
        "release mounted in its place); 0: off",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="compile the model with frozen weights (about 2x faster a face on CPU): on a CPU ahead of time "
        "by child processes, 4 batch shapes, kept in TORCHINDUCTOR_CACHE_DIR/fmpn-compiled and loaded from there on "
        "the next start or reload; auto: on a CPU with a C++ compiler",
    )

    # detection
    detect_max_side: int = Field(1280, ge=64, description="larger photos are detected on a downscaled copy")
    min_face_size: int = Field(20, ge=8, description="MTCNN minimum face size, pixels of the detection copy")
    min_face_score: float = Field(0.9, ge=0.0, le=1.0, description="drop detections scoring below this")
    retry_pad: float = Field(
        0.1, ge=0.0, le=1.0, description="no face found: detect again with this margin (of the longer side); 0: off"
    )

    # batching
    max_batch: int = Field(16, ge=1, description="most images per model batch")
    batch_wait_ms: float = Field(5.0, ge=0.0, description="longest wait for more requests to fill a batch")
    queue_size: int = Field(64, ge=1, description="images waiting for the model; beyond this -> 503")
    model_batch: int = Field(64, ge=1, description="most faces per forward pass (larger batches are chunked)")

    # limits
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest accepted image file, bytes")
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        le=178_956_970,  # Pillow refuses larger images itself (its decompression-bomb limit)
        description="largest accepted image, width x height (at most 178956970, Pillow's own limit)",
    )
    max_faces: int = Field(20, ge=1, description="faces classified per image (the largest N)")
    max_batch_images: int = Field(16, ge=1, description="images per POST /v1/predictions:batch")
    videos: bool = Field(True, description="accept POST /v1/videos:predict (FFmpeg decodes the uploads); false: 403")
    max_video_bytes: int = Field(100 * 1024 * 1024, ge=1, description="largest accepted video file, bytes")
    max_video_frames: int = Field(300, ge=1, description="most frames analysed per POST /v1/videos:predict")
    video_fps: float = Field(DEFAULT_FPS, gt=0, le=120, description="frames analysed a second of video, by default")
    video_detect_every: int = Field(
        1,
        ge=1,
        le=100,
        description="detect the whole video frame every N sampled frames and follow the faces in between "
        "(faster, misses faces that enter until the next whole-frame detection); 1: every frame, by default",
    )

    # results
    result_ttl_s: float = Field(600.0, gt=0, description="how long a result (and its image) stays retrievable")
    result_cap: int = Field(256, ge=1, description="most results kept; the oldest go first")
    result_max_bytes: int = Field(512 * 1024 * 1024, ge=1, description="most image bytes kept in memory")

    # access
    api_key: SecretStr | None = Field(None, description="when set, every /v1 route needs X-API-Key or Bearer")
    admin_api_key: SecretStr | None = Field(
        None, description="when set, POST /v1/models:reload is allowed with this key (X-API-Key or Bearer); else 403"
    )
    rate_limit_per_minute: float = Field(0.0, ge=0.0, description="requests per client per minute on /v1; 0 = off")
    rate_limit_burst: int | None = Field(None, ge=1, description="bucket size; default: one minute's worth")
    trust_forwarded_for: bool = Field(False, description="identify clients by X-Forwarded-For (behind a proxy)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="web origins whose pages may call the API from a browser (CORS), comma-separated; "
        "empty: none (the demo page is same-origin); *: any",
    )

    # logs
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: a JSON object a line (time, level, logger, message, request_id, ...)"
    )

    # rendering
    mask_alpha: float = Field(0.45, ge=0.0, le=1.0, description="default heat-map opacity in overlays")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key", "admin_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @model_validator(mode="after")
    def _a_result_fits_its_store(self) -> Settings:
        # A photo the store cannot hold would be answered with an id that already answers 404.
        if self.result_max_bytes < self.max_image_bytes:
            raise ValueError(
                f"result_max_bytes ({self.result_max_bytes}) is below max_image_bytes ({self.max_image_bytes}): "
                "the largest accepted photo could not be kept for its overlay; raise FMPN_RESULT_MAX_BYTES"
            )
        return self

    @property
    def max_body_bytes(self) -> int:
        """Largest body of a one-image request: the image in base64 inside JSON, plus room for the rest."""
        return self.max_image_bytes * 4 // 3 + 64 * 1024

    @property
    def max_batch_body_bytes(self) -> int:
        return self.max_body_bytes * self.max_batch_images
