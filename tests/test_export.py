"""Export: ONNX and TorchScript files give the PyTorch model's outputs, at any batch size.

Measured on the 2-core CPU (torch 2.14.1, onnxruntime 1.32.0, CPU profile, random init with gain-1
heads, BN statistics moved by one train-mode forward), three seeds, batch 1, 8 and 32:
ONNX max |logits - torch| <= 3.6e-7 and max |mask - torch| <= 2.4e-7; TorchScript is bit-identical
(0.0). The tolerances asserted (1e-4 on logits, 1e-5 on mask) leave room for other CPUs and
onnxruntime versions while still catching an export in train mode or with default BN statistics,
which move the logits by 0.3 to 0.95 (checked below).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest
import torch

from cli.main import main
from fmpn.checkpoint import load_checkpoint, save_checkpoint
from fmpn.models import build_fmpn
from fmpn.models.blocks import init_xavier
from fmpn.profiles import CPU
from training.export import max_errors, read_export_metadata, run_exported

CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
ATOL_LOGITS = 1e-4
ATOL_MASK = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real CPU-profile checkpoint and its two exports, made through the ``fmpn export`` command."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_fmpn(CPU, len(CLASSES))
    # The original init (xavier gain 0.02) makes the mask exactly 0.5 and the logits ~1e-3 whatever the
    # input; gain 1 gives outputs that depend on the face, so the comparison below means something.
    init_xavier(model.generator, 1.0)
    init_xavier(model.fusion, 1.0)
    torch.nn.init.xavier_normal_(model.classifier.fc.weight, 1.0)
    model.train()  # move the BN running statistics away from (0, 1) so the export must use them
    with torch.no_grad():
        model(torch.rand(8, 3, CPU.image_size, CPU.image_size) * 0.8 + 0.1)
    template = [[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]]
    ckpt = save_checkpoint(root / "m.safetensors", model, CPU, CLASSES, template=template)
    files = {"onnx": root / "m.onnx", "torchscript": root / "m.torchscript.pt"}
    for fmt, out in files.items():
        assert main(["export", str(ckpt), "--format", fmt, "--out", str(out), "--batch-size", "2"]) == 0
    return load_checkpoint(ckpt).build_model(), files, template


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("batch", [1, 8])
def test_export_matches_pytorch(exported, fmt: str, batch: int) -> None:
    model, files, _ = exported
    assert not model.training
    rgb = torch.rand(batch, 3, CPU.image_size, CPU.image_size, generator=torch.Generator().manual_seed(batch))
    logits, mask = run_exported(files[fmt], fmt, rgb)
    assert logits.shape == (batch, len(CLASSES)) and mask.shape == (batch, 1, CPU.image_size, CPU.image_size)
    assert mask.std().item() > 1e-3 and logits.abs().max().item() > 1e-2  # outputs that depend on the input
    err_logits, err_mask = max_errors(model, files[fmt], fmt, rgb)
    assert err_logits <= ATOL_LOGITS, f"{fmt} batch {batch}: logits differ by {err_logits:.2e}"
    assert err_mask <= ATOL_MASK, f"{fmt} batch {batch}: mask differs by {err_mask:.2e}"
    # The check is sharp enough to see the BN statistics: the same weights with default statistics are far off.
    stale = copy.deepcopy(model)
    for m in stale.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    with torch.no_grad():
        stale_logits = stale(rgb)[0]
    assert (stale_logits - logits).abs().max().item() > 100 * ATOL_LOGITS


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_embeds_classes_profile_and_size(exported, fmt: str) -> None:
    _, files, template = exported
    meta = read_export_metadata(files[fmt])
    assert json.loads(meta["classes"]) == CLASSES
    assert meta["profile"] == "cpu" and meta["image_size"] == "64"
    assert json.loads(meta["profile_json"]) == CPU.to_dict()
    assert json.loads(meta["template"]) == template
    assert json.loads(meta["flip_average"]) is False  # a checkpoint released without mirror averaging


def test_export_says_when_the_release_averages_the_mirror_image(exported, tmp_path) -> None:
    from training.release import release

    _, files, _ = exported
    flipped = release(files["onnx"].with_suffix(".safetensors"), tmp_path / "f.safetensors", flip_average=True)
    out = tmp_path / "f.torchscript.pt"
    assert main(["export", str(flipped), "--format", "torchscript", "--out", str(out)]) == 0
    assert json.loads(read_export_metadata(out)["flip_average"]) is True


def test_onnx_graph_has_a_dynamic_batch_axis_and_named_outputs(exported) -> None:
    _, files, _ = exported
    graph = onnx.load(str(files["onnx"])).graph
    assert [o.name for o in graph.output] == ["logits", "mask"]
    assert [i.name for i in graph.input] == ["rgb"]
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 64, 64]


def test_export_errors_are_one_line(tmp_path, exported, capsys) -> None:
    _, files, _ = exported
    missing = tmp_path / "missing.safetensors"
    assert main(["export", str(missing), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmpn export: error:") and "not found" in err and "\n" not in err

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"")  # never read: the format is checked first
    assert main(["export", str(ckpt), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown export format 'tflite'" in err and "onnx, torchscript" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_a_model_without_the_prior_exports_its_logits_alone(tmp_path, capsys) -> None:
    """The ablation (the CN alone) has no mask: its graphs have the one output; a bad opset is one line."""
    torch.manual_seed(1)
    profile = CPU.replace(prior=False)
    ckpt = save_checkpoint(tmp_path / "cn.safetensors", build_fmpn(profile, 7), profile, CLASSES)
    model = load_checkpoint(ckpt).build_model()
    rgb = torch.rand(3, 3, CPU.image_size, CPU.image_size)
    for fmt, out in (("onnx", tmp_path / "cn.onnx"), ("torchscript", tmp_path / "cn.torchscript.pt")):
        assert main(["export", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
        logits, mask = run_exported(out, fmt, rgb)
        assert logits.shape == (3, 7) and mask is None
        assert max_errors(model, out, fmt, rgb)[0] < ATOL_LOGITS
        assert "no mask" in read_export_metadata(out)["outputs"]
    assert [o.name for o in onnx.load(str(tmp_path / "cn.onnx")).graph.output] == ["logits"]
    capsys.readouterr()
    assert main(["export", str(ckpt), "--format", "onnx", "--opset", "99", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "opset 99 is not supported" in err and "\n" not in err and not (tmp_path / "x.onnx").exists()


def test_the_released_ensemble_exports_and_answers_as_served(fer2013, tmp_path) -> None:
    """The default model users get (three models, int4 storage, mirror averaging) through ``fmpn export``: the ONNX
    file gives the PyTorch ensemble's outputs on real FER2013 faces, and says to average the mirror image."""
    from fmpn.data import folder_samples
    from training.data import make_dataset
    from training.evaluate import remap

    weights = Path(__file__).resolve().parents[1] / "weights" / "fmpn-cpu-fer2013.safetensors"
    out = tmp_path / "release.onnx"
    assert main(["export", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    ckpt = load_checkpoint(weights)
    split, _, _ = remap(folder_samples(fer2013 / "val"), ckpt.classes)
    split.samples[:] = split.samples[::224][:16]  # every class
    dataset = make_dataset(split, ckpt.members[0], None, train=False)
    rgb = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    model = ckpt.build_model().eval()
    err_logits, err_mask = max_errors(model, out, "onnx", rgb)
    assert err_logits < ATOL_LOGITS and err_mask < ATOL_MASK
    meta = read_export_metadata(out)
    assert meta["profile"] == "cpu-fine+cpu+cpu" and json.loads(meta["flip_average"]) is True
    assert json.loads(meta["classes"]) == ckpt.classes
