"""Turn a training checkpoint into released weights: float16 storage, the same metadata."""

from __future__ import annotations

from pathlib import Path

from fmpn.checkpoint import load_checkpoint, save_checkpoint


def release(source: str | Path, out: str | Path, half: bool = True, flip_average: bool | None = None) -> Path:
    """``flip_average`` records whether predictions average the face and its mirror (None: keep the source's)."""
    ckpt = load_checkpoint(source)
    config = dict(ckpt.config, stored_dtype="float16" if half else "float32", source=Path(source).name)
    if flip_average is not None:
        config["flip_average"] = flip_average
    return save_checkpoint(
        out, ckpt.build_model(), ckpt.profile, ckpt.classes, template=ckpt.template, config=config, half=half
    )
