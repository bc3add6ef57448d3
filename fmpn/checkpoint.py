"""One-file checkpoints: weights in safetensors, everything else as JSON in its metadata.

Loading never unpickles anything: safetensors holds only tensors and strings. The file carries the
profile, the class names, the face-crop template and the training config, so a checkpoint alone is
enough to rebuild the model and pre-process faces the way it was trained.

Released files store their tensors in float16, or in int8 with one float32 scale per output channel (half the
size again; FER2013 validation moved by 4 faces of 3,589), or with the large tensors in int4 (a float16 scale per
32 weights: ResNet-18's layer3/layer4 convolutions, 90 % of its weights, at 4.5 bits; the rest int8), which fits
three models where int8 fits two; they are loaded back into float32 models. An ensemble
file holds several models side by side (``members.<i>.``) and their profiles in its metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fmpn.models.ensemble import Ensemble
from fmpn.models.fmpn import FMPN, build_fmpn
from fmpn.profiles import Profile

FORMAT = "fmpn-checkpoint/1"
Storage = Literal["float32", "float16", "int8", "int4"]
STORAGES: tuple[Storage, ...] = ("float32", "float16", "int8", "int4")
_SCALE = "::scale"  # int8 storage: "<tensor>::scale" holds the tensor's per-output-channel scales
_SCALE4 = "::scale4"  # int4 storage: a float16 scale per group of INT4_GROUP weights along each output row
_SHAPE = "::shape"  # int4 storage: the tensor's shape (its packed form is two weights a byte, rows x cols / 2)
INT4_GROUP = 32
INT4_MIN_SIZE = 1 << 18  # tensors this large go to int4: ResNet-18's layer3 and layer4 convolutions


def profile_name(profile: Profile, members: list[Profile] | None = None) -> str:
    """The profile's name; an ensemble's member profiles joined by "+" (``cpu+cpu-fine``)."""
    return "+".join(p.name for p in members) if members else profile.name


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or does not fit the model asked for."""


RELEASED_FILE = "fmpn-cpu-fer2013.safetensors"


def released_weights() -> Path:
    """The released file: the checkout's (``weights/``), wherever the command runs from, or the installed
    package's (the wheel carries it as a data file); else the relative path ``weights/...``, which then names
    what is missing in the error."""
    checkout = Path(__file__).resolve().parents[1] / "weights" / RELEASED_FILE
    if checkout.is_file():
        return checkout
    return _installed_weights() or Path("weights") / RELEASED_FILE


def _installed_weights() -> Path | None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("fmpn-fer")
    except PackageNotFoundError:
        return None
    for record in dist.files or []:
        if record.name == RELEASED_FILE:
            path = Path(str(dist.locate_file(record))).resolve()
            if path.is_file():
                return path
    return None


@dataclass
class Checkpoint:
    profile: Profile
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    template: list[list[float]] | None = None  # 5-point face template in crop-relative coordinates
    config: dict[str, Any] = field(default_factory=dict)  # training config and results
    members: list[Profile] | None = None  # an ensemble's member profiles (``profile`` is the first's)
    sha256: str = ""  # of the file's bytes as loaded (what a compiled model is built from and named by)

    @property
    def flip_average(self) -> bool:
        """Whether the release asks predictions to average each face with its mirror image."""
        return bool(self.config.get("flip_average", False))

    @property
    def profile_name(self) -> str:
        return profile_name(self.profile, self.members)

    def build_model(self) -> FMPN | Ensemble:
        n = len(self.classes)
        model = Ensemble([build_fmpn(p, n) for p in self.members]) if self.members else build_fmpn(self.profile, n)
        expected = model.state_dict()
        for k, v in self.state_dict.items():  # load_state_dict would cast int codes to float without a word
            if k in expected and v.is_floating_point() != expected[k].is_floating_point():
                raise CheckpointError(
                    f"checkpoint tensor {k} is stored as {v.dtype}, the model needs {expected[k].dtype} "
                    "(an int8/int4 tensor without its scale?)"
                )
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise CheckpointError(f"checkpoint tensor {k} holds NaN or infinite values")
        wrong = [k for k, v in self.state_dict.items() if k in expected and v.shape != expected[k].shape]
        if wrong:  # one line, not torch's one line per tensor
            k = wrong[0]
            raise CheckpointError(
                f"checkpoint does not fit profile {self.profile_name!r}: {len(wrong)} tensors differ in shape "
                f"(e.g. {k}: {list(self.state_dict[k].shape)} in the checkpoint, {list(expected[k].shape)} in the "
                "profile's model); the weights were trained with another profile"
            )
        try:
            missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        except RuntimeError as exc:  # any other mismatch
            message = " ".join(str(exc).split())
            raise CheckpointError(f"checkpoint does not fit profile {self.profile_name!r}: {message}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit profile {self.profile_name!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        return model.eval()


def save_checkpoint(
    path: str | Path,
    model: FMPN | Ensemble,
    profile: Profile,
    classes: list[str],
    *,
    template: list[list[float]] | None = None,
    config: dict[str, Any] | None = None,
    storage: Storage = "float32",
    members: list[Profile] | None = None,
) -> Path:
    """``storage`` float16 or int8 shrinks released weights; they are loaded back into the float32 model, so the
    file itself is what gets evaluated and served. ``members``: the profiles of an Ensemble ``model``."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if isinstance(model, Ensemble) != bool(members) or (members and len(members) != len(model.members)):
        raise ValueError("an ensemble is saved with one profile per member (members=...), a single model without")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if storage == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    elif storage in ("int8", "int4"):
        state = _quantize(state, int4=storage == "int4")
    meta = {
        "format": FORMAT,
        "profile": json.dumps(profile.to_dict()),
        "classes": json.dumps(list(classes)),
        "template": json.dumps(template),
        "config": json.dumps(config or {}),
    }
    if members:
        meta["members"] = json.dumps([p.to_dict() for p in members])
    if path.is_dir():
        raise CheckpointError(f"cannot write the checkpoint to {path}: it is a directory (name a .safetensors file)")
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_bytes(_sorted_header(save(state, metadata=meta)))
        tmp.replace(path)  # never leave a half-written checkpoint behind
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the checkpoint to {path}: {exc.strerror or exc}") from None
    return path


def _quantize(state: dict[str, torch.Tensor], int4: bool = False) -> dict[str, torch.Tensor]:
    """Weight matrices and conv kernels to int8, symmetric, one scale per output channel (rows of the matrix);
    everything else (biases, BatchNorm) to float16: those are under 1 % of the parameters. ``int4``: tensors of
    at least ``INT4_MIN_SIZE`` weights whose rows split into groups of ``INT4_GROUP`` go to int4 instead (wide
    layers lose least to it: on FER2013 validation it moved each of five models by -5 to +8 faces of 3,589
    against int8, where int4 on every tensor cost up to 24)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif value.dim() < 2:
            out[key] = value.half()
        elif int4 and value.numel() >= INT4_MIN_SIZE and (value.numel() // value.shape[0]) % INT4_GROUP == 0:
            out[key], out[key + _SCALE4] = _pack_int4(value.float().reshape(value.shape[0], -1))
            out[key + _SHAPE] = torch.tensor(value.shape, dtype=torch.int64)
        else:
            rows = value.float().reshape(value.shape[0], -1)
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
            out[key] = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(value.shape)
            out[key + _SCALE] = scale
    return out


def _pack_int4(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, C) float32 -> (R, C / 2) uint8, two weights a byte (the even one in the low nibble, each stored as
    q + 8 for q in -8..7), and the (R, C / INT4_GROUP) float16 scales."""
    groups = rows.reshape(rows.shape[0], -1, INT4_GROUP)
    scale = (groups.abs().amax(2) / 7.0).half().clamp_min(torch.finfo(torch.float16).tiny)  # never 0: no 0 / 0
    q = torch.round(groups / scale.float()[..., None]).clamp(-8, 7).to(torch.int16).add(8).reshape(rows.shape)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8), scale


def _unpack_int4(packed: torch.Tensor, scale: torch.Tensor, shape: list[int]) -> torch.Tensor:
    q = torch.stack([packed & 15, packed >> 4], dim=2).reshape(packed.shape[0], -1).float().sub(8.0)
    groups = q.reshape(q.shape[0], -1, INT4_GROUP) * scale.float()[..., None]
    return groups.reshape(shape)


def _dequantize(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The float32 tensors of an int8- or int4-stored file (a file without scales comes back as it is)."""
    out = {k: v for k, v in state.items() if not k.endswith((_SCALE, _SCALE4, _SHAPE))}
    for key in (k for k in state if k.endswith(_SCALE4)):
        name = key[: -len(_SCALE4)]
        q, scale, shape = out.get(name), state[key], state.get(name + _SHAPE)
        dims = [int(d) for d in shape.tolist()] if shape is not None and shape.dim() == 1 else []
        dims = dims if dims and all(d > 0 for d in dims) else []
        rows = dims[0] if dims else 0
        cols = (math.prod(dims) // rows) if rows else 0
        if (
            q is None
            or q.dtype != torch.uint8
            or q.shape != (rows, cols // 2)
            or cols % INT4_GROUP
            or scale.shape != (rows, cols // INT4_GROUP)
        ):
            raise CheckpointError(
                f"checkpoint {path} has broken int4 storage: {name} does not fit its scales {key} and shape"
            )
        out[name] = _unpack_int4(q, scale, dims)
    for key in (k for k in state if k.endswith(_SCALE)):
        name, scale = key[: -len(_SCALE)], state[key]
        q = out.get(name)
        if q is None or q.dtype != torch.int8 or q.dim() < 1 or q.shape[0] == 0 or scale.shape != (q.shape[0],):
            raise CheckpointError(f"checkpoint {path} has broken int8 storage: scale {key} does not fit its tensor")
        out[name] = (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)
    return out


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


def _header_metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's metadata from its bytes: an 8-byte little-endian header length, then the JSON header."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise ValueError("the header is cut short")
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint in ``path``, read once: its metadata, tensors and ``sha256`` all come from the same bytes,
    whatever replaces the file meanwhile."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = path.read_bytes()
        meta = _header_metadata(data)
        state = _dequantize(load(data), path)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, IndexError, RuntimeError) as exc:
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
        members = json.loads(meta["members"]) if "members" in meta else None
        if members is not None and (not isinstance(members, list) or not all(isinstance(m, dict) for m in members)):
            raise CheckpointError(f"checkpoint {path} has broken metadata: members must be a list of profiles")
        checkpoint = Checkpoint(
            profile=Profile.from_dict(profile),
            classes=json.loads(meta["classes"]),
            state_dict=state,
            template=json.loads(meta.get("template", "null")),
            config=json.loads(meta.get("config", "{}")),
            members=[Profile.from_dict(m) for m in members] if members else None,
            sha256=hashlib.sha256(data).hexdigest(),
        )
    except (KeyError, TypeError, ValueError, RecursionError) as exc:  # JSONDecodeError, a profile out of range
        raise CheckpointError(f"checkpoint {path} has broken metadata: {exc}") from None
    problem = _metadata_problem(checkpoint)
    if problem:
        raise CheckpointError(f"checkpoint {path} has broken metadata: {problem}")
    return checkpoint


def _metadata_problem(ckpt: Checkpoint) -> str | None:
    """What is wrong with a checkpoint's classes, template or config (each read by the service), or None."""
    classes = ckpt.classes
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        return f"classes must be a list of at least two class names, got {classes!r:.80}"
    if len(set(classes)) != len(classes):
        return f"classes must be distinct, got {classes}"
    template = ckpt.template
    if template is not None and not (
        isinstance(template, list)
        and len(template) == 5
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)
            for p in template
        )
    ):
        return f"template must be five (x, y) points, got {template!r:.80}"
    if not isinstance(ckpt.config, dict):
        return f"config must be a JSON object, got {ckpt.config!r:.80}"
    if not isinstance(ckpt.config.get("flip_average", False), bool):
        return f"config's flip_average must be true or false, got {ckpt.config['flip_average']!r}"
    return None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
