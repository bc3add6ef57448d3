"""Several FMPNs behind one forward: their class probabilities and motion masks, averaged.

Two models of one training lineage err alike, but a ``cpu`` and a ``cpu-fine`` model trained apart err on
different faces, so their average is right more often than either (docs/results.md, section 2). The ensemble
returns the log of the averaged probabilities in place of logits, so every caller's ``softmax(logits)`` yields
exactly the averaged probabilities, and it is a drop-in for an FMPN in prediction, evaluation and export.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fmpn.models.fmpn import FMPN


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[FMPN]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    @property
    def has_mask(self) -> bool:
        return any(member.has_mask for member in self.members)

    def forward(self, rgb: Tensor) -> tuple[Tensor, Tensor | None]:
        probs: list[Tensor] = []
        masks: list[Tensor] = []
        for member in self.members:
            logits, mask = member(rgb)
            probs.append(torch.softmax(logits.float(), dim=1))
            if mask is not None:
                masks.append(mask)
        mean = torch.stack(probs).mean(0)
        # log(0) would be -inf, and softmax of a row holding -inf is still right, but ONNX runtimes and
        # bf16 arithmetic handle a finite floor more gracefully.
        return mean.clamp_min(1e-30).log(), (torch.stack(masks).mean(0) if masks else None)
