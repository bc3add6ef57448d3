"""The model is the original FMPN: exact parameter counts and output shapes."""

from __future__ import annotations

import pytest
import torch

from fmpn.models import MotionMaskGenerator, PriorFusionNet, build_fmpn, fmpn_cpu, fmpn_cpu_fine, to_gray
from fmpn.profiles import CPU, PAPER, PROFILES, get_profile


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_generator_and_fusion_have_the_original_parameter_counts() -> None:
    assert count(MotionMaskGenerator(299, ngf=64, n_blocks=4)) == 6_040_968
    assert count(PriorFusionNet()) == 377


@pytest.mark.parametrize("size", [299, 112, 64, 48])
def test_generator_keeps_the_input_size(size: int) -> None:
    gen = MotionMaskGenerator(size, ngf=8, n_blocks=1).eval()
    with torch.no_grad():
        mask = gen(torch.rand(2, 1, size, size))
    assert mask.shape == (2, 1, size, size)
    assert 0 < mask.min() and mask.max() < 1


@pytest.mark.parametrize("size", [299, 112])
def test_paper_model_shapes(size: int) -> None:
    model = build_fmpn(PAPER.replace(image_size=size), num_classes=7).eval()
    with torch.no_grad():
        logits, mask = model(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 7)
    assert mask.shape == (2, 1, size, size)
    assert count(model.generator) == 6_040_968
    assert count(model.fusion) == 377


def test_cpu_model_accepts_grey_input_and_resnet_backbones() -> None:
    model = fmpn_cpu(num_classes=6).eval()
    x = torch.rand(3, 1, CPU.image_size, CPU.image_size)
    with torch.no_grad():
        logits, mask = model(x)
    assert logits.shape == (3, 6) and mask.shape == (3, 1, 64, 64)
    for name in ("resnet34", "resnet50"):
        m = build_fmpn(CPU.replace(backbone=name, ngf=4, n_blocks=1), 7).eval()
        with torch.no_grad():
            assert m(torch.rand(1, 3, 64, 64))[0].shape == (1, 7)


def test_grey_conversion_matches_pil_luma() -> None:
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert to_gray(rgb).item() == pytest.approx(0.299)


def test_profiles_round_trip_and_reject_unknown_names() -> None:
    for profile in PROFILES.values():
        assert type(profile).from_dict(profile.to_dict()) == profile
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_fmpn(CPU.replace(backbone="not_a_net"), 7)


def test_cpu_fine_drops_the_max_pool_and_takes_cpu_weights() -> None:
    """The CN's last feature map: 2x2 for a 64 px face with the max-pool, 4x4 without; same parameters."""
    fine, plain = get_profile("cpu-fine"), get_profile("cpu")
    maps = {}
    for profile in (plain, fine):
        model = build_fmpn(profile, 7).eval()
        hook = lambda m, i, o, name=profile.name: maps.update({name: i[0].shape})  # noqa: E731
        model.classifier.avgpool.register_forward_hook(hook)
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
    assert maps == {"cpu": (1, 512, 2, 2), "cpu-fine": (1, 512, 4, 4)}
    coarse = build_fmpn(plain, 7)
    model = fmpn_cpu_fine(7)
    model.load_state_dict(coarse.state_dict())  # strict: the max-pool holds no parameters
    # An old checkpoint's profile (no cn_maxpool key) keeps the max-pool.
    data = plain.to_dict()
    del data["cn_maxpool"]
    assert type(plain).from_dict(data).cn_maxpool
    with pytest.raises(ValueError, match="no stem max-pool"):
        build_fmpn(fine.replace(backbone="mobilenet_v3_small"), 7)
