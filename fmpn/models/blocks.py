"""Building blocks shared by the generator and the fusion net, as in the original CycleGAN-style code."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]


def norm_factory(kind: str) -> tuple[NormFactory, bool]:
    """The norm layer for ``kind`` and whether convs need a bias (only with InstanceNorm, as the original)."""
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True), False
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True), True
    if kind == "none":
        return lambda _: nn.Identity(), True
    raise ValueError(f"unknown norm {kind!r}; use batch, instance or none")


class ResnetBlock(nn.Module):
    """conv-norm-PReLU-conv-norm-PReLU with an identity shortcut and no activation after the sum."""

    def __init__(self, dim: int, norm: NormFactory, use_bias: bool, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(dim, dim, 3, padding=1, bias=use_bias),
            norm(dim),
            nn.PReLU(),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.Conv2d(dim, dim, 3, padding=1, bias=use_bias), norm(dim), nn.PReLU()]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def init_xavier(module: nn.Module, gain: float = 0.02) -> None:
    """The original ``--init_type xavier --init_gain 0.02``: tiny conv weights, BN weight ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
