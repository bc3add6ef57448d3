"""The composite FMPN: RGB face in [0, 1] -> (class logits, motion mask)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmpn.models.classifier import build_classifier
from fmpn.models.fusion import PriorFusionNet
from fmpn.models.generator import MotionMaskGenerator
from fmpn.profiles import CPU, CPU_FINE, PAPER, Profile

# ITU-R 601 luma, the weights PIL's convert('L') uses.
_LUMA = (0.299, 0.587, 0.114)


def to_gray(rgb: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) grey image, the luma PIL's convert('L') computes."""
    r, g, b = _LUMA  # plain scalars: no per-call tensor (and host-to-device copy on CUDA)
    return r * rgb[:, 0:1] + g * rgb[:, 1:2] + b * rgb[:, 2:3]


class FMPN(nn.Module):
    """FMG predicts the mask from the grey face; PFN fuses mask x grey with the colour face; CN classifies.

    Without a generator and fusion net (the ablation) the CN sees the colour face and the mask is None.
    """

    def __init__(self, generator: nn.Module | None, fusion: nn.Module | None, classifier: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.fusion = fusion
        self.classifier = classifier

    @property
    def has_mask(self) -> bool:
        """Whether the model predicts a motion mask (False for the ablation, the CN alone)."""
        return self.generator is not None and self.fusion is not None

    def forward(self, rgb: Tensor) -> tuple[Tensor, Tensor | None]:
        rgb = rgb.expand(-1, 3, -1, -1)
        if self.generator is None or self.fusion is None:  # not has_mask, spelt out for the type checker
            return self.classifier(rgb), None
        gray = to_gray(rgb)
        mask = self.generator(gray)
        fused = self.fusion(rgb, mask * gray)
        return self.classifier(fused), mask


def view_probabilities(
    model: nn.Module, rgb: Tensor, mirror: bool = False, classes: int | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Softmax probabilities (float32) of a batch of faces, those of their mirror images (``mirror``, else None)
    from the same forward pass, and the faces' motion masks: one pass gives both the one-view and the mirrored
    score of a test set. ``classes``: the softmax of the first that many logits only, for a test set without the
    model's last classes (a CK+ fold model trained with an extra ``neutral``)."""
    n = rgb.shape[0]
    logits, mask = model(torch.cat([rgb, rgb.flip(-1)]) if mirror else rgb)
    if classes is not None:
        if classes > logits.shape[1]:
            raise ValueError(f"the model has {logits.shape[1]} classes, the test set {classes}")
        logits = logits[:, :classes]
    probs = torch.softmax(logits.float(), dim=1)
    if not mirror:
        return probs, None, mask
    return probs[:n], probs[n:], None if mask is None else mask[:n]


def class_probabilities(model: nn.Module, rgb: Tensor, flip_average: bool = False) -> tuple[Tensor, Tensor | None]:
    """Softmax probabilities (float32) and motion masks of a batch of faces.

    ``flip_average`` also runs each face's mirror image and averages the two probability vectors: the
    nets train with random flips, so both views are faces they know, and their errors partly cancel.
    The masks stay those of the faces as given.
    """
    probs, mirrored, mask = view_probabilities(model, rgb, flip_average)
    return (probs if mirrored is None else (probs + mirrored) / 2), mask


def build_fmpn(profile: Profile, num_classes: int, backbone_weights: str | None = None) -> FMPN:
    classifier = build_classifier(profile.backbone, num_classes, backbone_weights, profile.cn_maxpool)
    if not profile.prior:
        return FMPN(None, None, classifier)
    generator = MotionMaskGenerator(profile.image_size, profile.ngf, profile.n_blocks, profile.norm)
    return FMPN(generator, PriorFusionNet(), classifier)


def fmpn_paper(num_classes: int = 7, backbone_weights: str | None = None) -> FMPN:
    """The paper's model: 299 px, FMG ngf 64 with 4 blocks, Inception-v3."""
    return build_fmpn(PAPER, num_classes, backbone_weights)


def fmpn_cpu(num_classes: int = 7, backbone_weights: str | None = None) -> FMPN:
    """The 2-core CPU model: 64 px, a narrow FMG, ResNet-18."""
    return build_fmpn(CPU, num_classes, backbone_weights)


def fmpn_cpu_fine(num_classes: int = 7, backbone_weights: str | None = None) -> FMPN:
    """The CPU model with the CN's max-pool removed: a 4x4 last feature map for small faces."""
    return build_fmpn(CPU_FINE, num_classes, backbone_weights)
