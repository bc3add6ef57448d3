"""Export a checkpoint to ONNX or TorchScript for serving outside this package.

Both formats take ``rgb``: a float32 (B, 3, S, S) batch in [0, 1] with S the profile's image size,
and return ``logits`` (B, num_classes) and ``mask`` (B, 1, S, S); the batch axis is dynamic. The
model is exported in eval mode (BN running statistics, no dropout). The exported graph always takes
three channels: a grey face must be repeated to RGB by the caller (the checkpoint's ``to_gray`` is
traced for 3-channel input).

The class names, profile and image size travel inside the file:

* ONNX: ``metadata_props`` (keys in :data:`METADATA_KEYS`; ``classes``, ``profile_json`` and
  ``template`` are JSON strings);
* TorchScript: an extra file ``fmpn.json`` in the archive, read back with
  ``torch.jit.load(path, _extra_files={"fmpn.json": ""})``.

:func:`read_export_metadata` reads either back as a ``dict[str, str]``.

ONNX export uses the TorchScript-based exporter (``dynamo=False``): the torch.export-based one
needs ``onnxscript``, which is not a dependency. It is deprecated in torch >= 2.9 but still present
in the pinned torch.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmpn.checkpoint import load_checkpoint, profile_name
from fmpn.profiles import Profile

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "fmpn-export/1"
DEFAULT_OPSET = 17
INPUT_NAME = "rgb"
OUTPUT_NAMES = ("logits", "mask")
TORCHSCRIPT_EXTRA = "fmpn.json"
METADATA_KEYS = (
    "format",
    "classes",
    "profile",
    "profile_json",
    "image_size",
    "input",
    "outputs",
    "template",
    "flip_average",
)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportError(ValueError):
    """Bad export arguments or a missing optional dependency (a ValueError, so the CLI prints one line)."""


def _max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # a private constant: the pinned torch's value otherwise
        return 23


MIN_OPSET = 11  # the oldest opset the model's operators export to


class _LogitsOnly(nn.Module):
    """A model without the motion prior (``--ablation``) returns no mask, and a graph cannot return None: its
    export has the one output, ``logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model(rgb)[0]


def check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return fmt


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """``model.safetensors`` -> ``model.onnx`` / ``model.torchscript.pt``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + SUFFIXES[check_format(fmt)])


def export_metadata(
    profile: Profile,
    classes: list[str],
    template: list[list[float]] | None = None,
    flip_average: bool = False,
    members: list[Profile] | None = None,
    has_mask: bool = True,
) -> dict[str, str]:
    """``flip_average``: the release averages softmax(logits) of each face and its mirror (the graph runs one view).
    ``members``: an ensemble's profiles (its ``logits`` are the log of the members' mean probabilities)."""
    s = profile.image_size
    mask = f"; mask: (batch, 1, {s}, {s}) in (0, 1)" if has_mask else " (no mask: a model without the motion prior)"
    extra = {"members_json": json.dumps([p.to_dict() for p in members])} if members else {}
    return {
        "format": EXPORT_FORMAT,
        "classes": json.dumps(list(classes)),
        "profile": profile_name(profile, members),
        "profile_json": json.dumps(profile.to_dict()),
        **extra,
        "image_size": str(s),
        "input": f"{INPUT_NAME}: float32 (batch, 3, {s}, {s}) RGB in [0, 1]",
        "outputs": f"logits: (batch, {len(classes)}){mask}",
        "template": json.dumps(template),
        "flip_average": json.dumps(flip_average),
    }


@dataclass
class ExportResult:
    path: Path
    format: str
    metadata: dict[str, str]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _example_input(profile: Profile, batch_size: int) -> torch.Tensor:
    if batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, 3, profile.image_size, profile.image_size, generator=generator)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Known, harmless warnings: the tracer's about ``to_gray``'s channel check and luma constant (both
    meant as constants), the legacy ONNX exporter's and TorchScript's deprecation notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        # TorchScript is deprecated in torch 2.14 (FutureWarning on trace/save/load) but is the format asked for.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\..*` is deprecated")
        yield


def export_onnx(
    model: nn.Module,
    out: Path,
    example: torch.Tensor,
    metadata: dict[str, str],
    opset: int = DEFAULT_OPSET,
    outputs: tuple[str, ...] = OUTPUT_NAMES,
) -> None:
    """``outputs``: the names of what ``model`` returns (logits alone for a model without the prior)."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'fmpn-fer[export]'") from None
    if not MIN_OPSET <= opset <= _max_opset():
        raise ExportError(
            f"ONNX opset {opset} is not supported: use {MIN_OPSET} to {_max_opset()} (default {DEFAULT_OPSET})"
        )
    tmp = out.with_name(out.name + ".tmp")
    batch = {0: "batch"}
    with _quiet_tracing():
        try:
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(outputs),
                dynamic_axes={INPUT_NAME: batch, **{name: batch for name in outputs}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise ExportError(f"ONNX export at opset {opset} failed: {' '.join(str(exc).split())[:300]}") from None
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"FMPN facial-expression recognition: rgb -> ({', '.join(outputs)})"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(out)


def export_torchscript(model: nn.Module, out: Path, example: torch.Tensor, metadata: dict[str, str]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    with _quiet_tracing():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})
    tmp.replace(out)


def export_model(
    model: nn.Module,
    profile: Profile,
    classes: list[str],
    fmt: str,
    out: str | Path,
    *,
    batch_size: int = 1,
    template: list[list[float]] | None = None,
    opset: int = DEFAULT_OPSET,
    flip_average: bool = False,
    members: list[Profile] | None = None,
) -> ExportResult:
    """Export ``model`` (switched to eval mode, on the CPU) to ``out``; ``batch_size`` is the traced example's."""
    fmt = check_format(fmt)
    example = _example_input(profile, batch_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    has_mask = getattr(model, "has_mask", True)
    graph = model if has_mask else _LogitsOnly(model)  # decided once, for the metadata and both formats
    metadata = export_metadata(profile, classes, template, flip_average, members, has_mask=has_mask)
    try:
        with torch.no_grad():
            if fmt == "onnx":
                export_onnx(graph, out, example, metadata, opset, OUTPUT_NAMES if has_mask else OUTPUT_NAMES[:1])
            else:
                export_torchscript(graph, out, example, metadata)
    finally:
        out.with_name(out.name + ".tmp").unlink(missing_ok=True)  # never leave a half-written file behind
    return ExportResult(out, fmt, metadata)


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    fmt = check_format(fmt)
    if batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {batch_size}")
    ckpt = load_checkpoint(checkpoint)  # CheckpointError (a ValueError) when missing or broken
    model = ckpt.build_model()
    out = default_output(checkpoint, fmt) if out is None else out
    return export_model(
        model,
        ckpt.profile,
        ckpt.classes,
        fmt,
        out,
        batch_size=batch_size,
        template=ckpt.template,
        opset=opset,
        flip_average=ckpt.flip_average,
        members=ckpt.members,
    )


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata embedded by :func:`export_model`, from an ONNX or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if zipfile.is_zipfile(path):  # a TorchScript archive
        extra = {TORCHSCRIPT_EXTRA: ""}
        with _quiet_tracing():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[TORCHSCRIPT_EXTRA])
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def run_exported(path: str | Path, fmt: str, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run an exported file on ``rgb`` on the CPU: onnxruntime for ONNX, ``torch.jit.load`` for TorchScript.
    The mask is None for a model without the motion prior."""
    fmt = check_format(fmt)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = [torch.from_numpy(a) for a in session.run(names, {INPUT_NAME: rgb.cpu().numpy()})]
        return outputs[0], outputs[1] if len(outputs) > 1 else None
    with _quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = module(rgb.cpu())
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def max_errors(model: nn.Module, path: str | Path, fmt: str, rgb: torch.Tensor) -> tuple[float, float]:
    """Max absolute difference (logits, mask) between the eval-mode PyTorch model and the exported file (mask 0.0
    for a model without one)."""
    model = model.cpu().eval()
    with torch.no_grad():
        ref_logits, ref_mask = model(rgb)
    logits, mask = run_exported(path, fmt, rgb)
    mask_error = 0.0 if ref_mask is None or mask is None else (ref_mask - mask).abs().max().item()
    return (ref_logits - logits).abs().max().item(), mask_error
