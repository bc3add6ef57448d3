"""The inference rewrites (``fmpn.models.fuse``) keep what a model computes, and the service runs them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from fmpn.models import Ensemble, build_fmpn, class_probabilities
from fmpn.models.fuse import fold_batch_norms, prepare_for_inference
from fmpn.profiles import PAPER, get_profile


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with statistics and affine weights far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def pair() -> Ensemble:
    return Ensemble([build_fmpn(get_profile("cpu"), 7), build_fmpn(get_profile("cpu-fine"), 7)])


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (lambda: build_fmpn(get_profile("cpu"), 7), 64),
        (lambda: build_fmpn(get_profile("cpu-fine"), 7), 64),
        (pair, 64),
        (lambda: build_fmpn(PAPER.replace(image_size=112, ngf=8), 7), 112),  # Inception-v3's BasicConv2d pairs
        (lambda: build_fmpn(get_profile("cpu").replace(backbone="resnet50"), 7), 64),  # Bottleneck's three pairs
    ],
    ids=["cpu", "cpu-fine", "cpu+cpu-fine", "paper-inception", "resnet50"],
)
def test_folding_removes_every_batch_norm_and_keeps_the_outputs(make, size: int) -> None:
    torch.manual_seed(0)
    model = trained_looking(make())
    before = batch_norms(model)
    x = torch.rand(3, 3, size, size)
    with torch.inference_mode():
        logits, mask = model(x)
        assert fold_batch_norms(model) == before > 0
        assert batch_norms(model) == 0
        folded_logits, folded_mask = model(x)
    torch.testing.assert_close(folded_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded_mask, mask, rtol=1e-4, atol=1e-5)


def test_folding_refuses_a_model_in_training_mode() -> None:
    model = build_fmpn(get_profile("cpu"), 7).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(model)
    assert batch_norms(model) > 0  # untouched


def test_bf16_rewrite_stores_bf16_weights_and_agrees_with_plain_autocast() -> None:
    torch.manual_seed(1)
    plain = trained_looking(pair())
    fast = prepare_for_inference(copy.deepcopy(plain), "bfloat16", torch.device("cpu"))
    convs = [m for m in fast.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert all(p.dtype == torch.float32 for m in fast.modules() if isinstance(m, nn.PReLU) for p in m.parameters())
    x = torch.rand(16, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = class_probabilities(plain, x, flip_average=True)
        got, mask = class_probabilities(fast, x, flip_average=True)
    assert mask is not None and mask.dtype == torch.float32  # the mask's sigmoid stays in float32
    # bf16 has 8 significant bits: probabilities agree to about a percent, not to float32's precision.
    assert (got - want).abs().max() < 0.03


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_service_runs_the_released_model_rewritten(fer2013, precision: str) -> None:
    """The predictor's model is folded (bf16 under bf16) and answers as the plain model does on real faces."""
    import numpy as np
    from PIL import Image

    from fmpn.checkpoint import load_checkpoint
    from fmpn.inference import Predictor
    from fmpn.precision import autocast

    weights = Path(__file__).resolve().parents[1] / "weights" / "fmpn-cpu-fer2013.safetensors"
    predictor = Predictor(weights, "cpu", precision=precision)
    assert batch_norms(predictor.model) == 0
    convs = [m for m in predictor.model.modules() if isinstance(m, nn.Conv2d)]
    assert {m.weight.dtype for m in convs} == {torch.bfloat16 if precision == "bfloat16" else torch.float32}
    faces = sorted((fer2013 / "val").glob("*/*.jpg"))[::100][:32]
    crops = np.stack([predictor.crop_whole(np.asarray(Image.open(p).convert("RGB")))[0] for p in faces])
    got, _ = predictor.classify(crops)
    plain = load_checkpoint(weights).build_model()
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode(), autocast(precision, torch.device("cpu")):
        want, _ = class_probabilities(plain.eval(), x, predictor.flip_average)
    tolerance = 1e-4 if precision == "float32" else 0.05
    assert np.abs(got - want.double().numpy()).max() < tolerance
    assert (got.argmax(1) == want.argmax(1).numpy()).mean() >= (1.0 if precision == "float32" else 0.9)


def test_float16_folds_in_float32_then_casts_everything() -> None:
    """What CUDA serves: the folds computed in float32 (a batch norm's variance is not safe in half precision),
    then the whole model in float16."""
    torch.manual_seed(2)
    plain = trained_looking(build_fmpn(get_profile("cpu"), 7))
    half = prepare_for_inference(copy.deepcopy(plain), "float16", torch.device("cpu"))
    assert batch_norms(half) == 0 and {p.dtype for p in half.parameters()} == {torch.float16}
    x = torch.rand(4, 3, 64, 64)
    with torch.inference_mode():
        want = torch.softmax(plain(x)[0], 1)
        got = torch.softmax(half(x.half())[0].float(), 1)
    assert (got - want).abs().max() < 0.02
