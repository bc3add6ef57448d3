"""Turn a training checkpoint into released weights: float16 storage, the same metadata."""

from __future__ import annotations

from pathlib import Path

from fmpn.checkpoint import load_checkpoint, save_checkpoint


def release(source: str | Path, out: str | Path, half: bool = True) -> Path:
    ckpt = load_checkpoint(source)
    config = dict(ckpt.config, stored_dtype="float16" if half else "float32", source=Path(source).name)
    return save_checkpoint(
        out, ckpt.build_model(), ckpt.profile, ckpt.classes, template=ckpt.template, config=config, half=half
    )
