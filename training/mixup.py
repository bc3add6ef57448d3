"""Mixup (Zhang et al. 2018): train on convex blends of two faces with blended targets.

Restarting a trained FER2013 model overfits within a few epochs even with the strong augmentation
(docs/results.md, section 2); blending pairs of faces keeps the training loss from collapsing onto the
images. One blend weight per batch, drawn from Beta(alpha, alpha), mixes each face with a shuffled
partner; the class targets become the same blend of one-hot vectors and the FMG's class-mask targets the
same blend of the two masks, so every term of the stage-2 loss stays consistent with the mixed image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_ALPHA = 2.0


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= MAX_ALPHA:
        raise ValueError(f"--mixup must be between 0 (off) and {MAX_ALPHA:g} (Beta alpha), got {alpha}")


def mix_batch(
    rgb: Tensor, target: Tensor | None, labels: Tensor, num_classes: int, alpha: float
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(mixed faces, mixed mask targets, soft labels (N, K)); ``labels`` class indices or (N, K) probabilities
    (teacher targets). Uses torch's RNG, so a resumed run replays it."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(rgb.shape[0], device=rgb.device)

    def blend(t: Tensor) -> Tensor:
        return torch.lerp(t[perm], t, lam)  # lam * t + (1 - lam) * partner

    soft = blend(labels.float() if labels.dim() == 2 else F.one_hot(labels, num_classes).float())
    return blend(rgb), None if target is None else blend(target), soft
