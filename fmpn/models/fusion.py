"""PFN, the prior fusion net: mixes the colour face with the mask-weighted grey face."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmpn.models.blocks import ResnetBlock, init_xavier, norm_factory


class PriorFusionNet(nn.Module):
    """sigmoid(conv(RB(stem_a(rgb) + stem_b(focus)))): 377 parameters, output in (0, 1) for the CN."""

    def __init__(self, rgb_channels: int = 3, focus_channels: int = 1, n_blocks: int = 1) -> None:
        super().__init__()
        norm_layer, use_bias = norm_factory("batch")
        self.stem_rgb = nn.Sequential(
            nn.Conv2d(rgb_channels, 3, 3, padding=1, bias=use_bias), norm_layer(3), nn.ReLU(True)
        )
        self.stem_focus = nn.Sequential(
            nn.Conv2d(focus_channels, 3, 3, padding=1, bias=use_bias), norm_layer(3), nn.ReLU(True)
        )
        self.trunk = nn.Sequential(
            *[ResnetBlock(3, norm_layer, use_bias) for _ in range(n_blocks)],
            nn.Conv2d(3, 3, 3, padding=1, bias=False),
            nn.Sigmoid(),
        )
        init_xavier(self)

    def forward(self, rgb: Tensor, focus: Tensor) -> Tensor:
        return self.trunk(torch.add(self.stem_rgb(rgb), self.stem_focus(focus)))
