"""FMG, the facial-motion mask generator (the original ``ResFaceGenNet``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmpn.models.blocks import ResnetBlock, init_xavier, norm_factory


def _down(size: int) -> int:
    """Output size of a 4x4 stride-2 pad-1 conv."""
    return (size + 2 - 4) // 2 + 1


class MotionMaskGenerator(nn.Module):
    """Grey face (B, 1, S, S) in [0, 1] -> motion mask (B, 1, S, S) in (0, 1).

    Encoder (7x7 conv, two stride-2 convs), ``n_blocks`` residual blocks at 1/4 resolution and a
    mirrored decoder. The transposed convs' ``output_padding`` restores the exact encoder sizes, which
    for 299 px is the original's ``final_size % 2`` and 1.
    """

    def __init__(
        self,
        image_size: int,
        ngf: int = 64,
        n_blocks: int = 4,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        norm_layer, use_bias = norm_factory(norm)
        s1 = _down(image_size)
        s2 = _down(s1)
        pad1, pad2 = s1 - 2 * s2, image_size - 2 * s1

        def conv(cin: int, cout: int, k: int, stride: int, pad: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, stride, pad, bias=use_bias), norm_layer(cout), nn.ReLU(True)]

        def deconv(cin: int, cout: int, out_pad: int) -> list[nn.Module]:
            return [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, output_padding=out_pad, bias=use_bias),
                norm_layer(cout),
                nn.ReLU(True),
            ]

        self.encoder = nn.Sequential(
            *conv(1, ngf, 7, 1, 3), *conv(ngf, ngf * 2, 4, 2, 1), *conv(ngf * 2, ngf * 4, 4, 2, 1)
        )
        self.blocks = nn.Sequential(*[ResnetBlock(ngf * 4, norm_layer, use_bias, use_dropout) for _ in range(n_blocks)])
        self.decoder = nn.Sequential(*deconv(ngf * 4, ngf * 2, pad1), *deconv(ngf * 2, ngf, pad2))
        self.top = nn.Sequential(nn.Conv2d(ngf, 1, 7, 1, 3, bias=False), nn.Sigmoid())
        init_xavier(self)

    def forward(self, gray: Tensor) -> Tensor:
        logits = self.top[0](self.decoder(self.blocks(self.encoder(gray))))
        if torch.is_autocast_enabled(logits.device.type):
            # bf16 has 8 significant bits: a mask value of 0.998 would come out as exactly 1.
            logits = logits.float()
        return self.top[1](logits)
