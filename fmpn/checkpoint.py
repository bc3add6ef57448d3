"""One-file checkpoints: weights in safetensors, everything else as JSON in its metadata.

Loading never unpickles anything: safetensors holds only tensors and strings. The file carries the
profile, the class names, the face-crop template and the training config, so a checkpoint alone is
enough to rebuild the model and pre-process faces the way it was trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from fmpn.models.fmpn import FMPN, build_fmpn
from fmpn.profiles import Profile

FORMAT = "fmpn-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or does not fit the model asked for."""


@dataclass
class Checkpoint:
    profile: Profile
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    template: list[list[float]] | None = None  # 5-point face template in crop-relative coordinates
    config: dict[str, Any] = field(default_factory=dict)  # training config and results

    @property
    def flip_average(self) -> bool:
        """Whether the release asks predictions to average each face with its mirror image."""
        return bool(self.config.get("flip_average", False))

    def build_model(self) -> FMPN:
        model = build_fmpn(self.profile, len(self.classes))
        expected = model.state_dict()
        wrong = [k for k, v in self.state_dict.items() if k in expected and v.shape != expected[k].shape]
        if wrong:  # one line, not torch's one line per tensor
            k = wrong[0]
            raise CheckpointError(
                f"checkpoint does not fit profile {self.profile.name!r}: {len(wrong)} tensors differ in shape "
                f"(e.g. {k}: {list(self.state_dict[k].shape)} in the checkpoint, {list(expected[k].shape)} in the "
                "profile's model); the weights were trained with another profile"
            )
        try:
            missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        except RuntimeError as exc:  # any other mismatch
            message = " ".join(str(exc).split())
            raise CheckpointError(f"checkpoint does not fit profile {self.profile.name!r}: {message}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit profile {self.profile.name!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        return model.eval()


def save_checkpoint(
    path: str | Path,
    model: FMPN,
    profile: Profile,
    classes: list[str],
    *,
    template: list[list[float]] | None = None,
    config: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """``half`` stores floating-point tensors as float16 (released weights: half the size); they are
    loaded back into the float32 model, so the file itself is what gets evaluated and served."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "profile": json.dumps(profile.to_dict()),
        "classes": json.dumps(list(classes)),
        "template": json.dumps(template),
        "config": json.dumps(config or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(_sorted_header(save(state, metadata=meta)))
    tmp.replace(path)  # never leave a half-written checkpoint behind
    return path


def _sorted_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted. safetensors writes the metadata in hash
    order, which changes from one process to the next, so the same weights got another checksum on each
    ``fmpn release``; sorted, a release's sha256 is reproducible. Tensor offsets are relative to the data
    section, so only the header is rewritten (padded with spaces to 8 bytes, as safetensors does)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        meta = read_metadata(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        profile = json.loads(meta["profile"])
        if not isinstance(profile, dict):
            raise CheckpointError(
                f"checkpoint {path} has broken metadata: its profile must be the profile's settings (a JSON object), "
                f"got {profile!r}"
            )
        return Checkpoint(
            profile=Profile.from_dict(profile),
            classes=json.loads(meta["classes"]),
            state_dict=state,
            template=json.loads(meta.get("template", "null")),
            config=json.loads(meta.get("config", "{}")),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has broken metadata: {exc}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
