"""The U-Net decoder: from the coarsest backbone map up to the input resolution, with a skip connection
from every finer backbone map (as segmentation_models_pytorch's ``Unet``).

Each block upsamples 2x (nearest), concatenates the backbone map of that stride when there is one, and
applies two ``conv3x3 -> BatchNorm -> ReLU``. There is one block per halving of the coarsest stride (B4 at
strides 2 ... 32: five blocks, the last one without a skip, ending at stride 1). Channels come from
``feature_info``; ``decoder_channels`` sets the blocks' widths. The convolutions start from He
(fan-in, ReLU) initialisation as SMP's decoders do: PyTorch's default draws them ~2.4x smaller, which under
BatchNorm and Adam multiplies their effective learning rate ~6x (docs/studies/segmentation-vs-smp.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from b4transfer.errors import UserError


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def default_decoder_channels(blocks: int) -> list[int]:
    """``[256, 128, 64, 32, 16]`` for five blocks: halving, ending at 16."""
    return [min(256, 16 * 2 ** (blocks - 1 - k)) for k in range(blocks)]


class UNetDecoder(nn.Module):
    """Backbone maps -> ``(N, decoder_channels[-1], H, W)`` at stride 1.

    Args:
        in_channels: Channels of each backbone map, finest first (``feature_info.channels()``).
        strides: Their strides, ascending powers of 2 (e.g. 2, 4, 8, 16, 32).
        decoder_channels: Width of each block, coarsest first; one per halving of ``strides[-1]``.
    """

    def __init__(self, in_channels: list[int], strides: list[int], *, decoder_channels=None) -> None:
        super().__init__()
        blocks = round(math.log2(strides[-1]))
        channels = list(decoder_channels) if decoder_channels else default_decoder_channels(blocks)
        if len(channels) != blocks or not all(isinstance(c, int) and c > 0 for c in channels):
            raise UserError(
                f"head.decoder_channels={decoder_channels!r}: the U-Net decoder needs {blocks} "
                "positive widths "
                f"(one per 2x upsampling from stride {strides[-1]} to 1), e.g. "
                f"{default_decoder_channels(blocks)}."
            )
        skip_of = dict(zip(strides[:-1], in_channels[:-1]))
        self.skip_index = []
        self.blocks = nn.ModuleList()
        prev = in_channels[-1]
        for k, out in enumerate(channels):
            stride = strides[-1] // 2 ** (k + 1)
            skip = skip_of.get(stride, 0)
            self.skip_index.append(strides.index(stride) if skip else -1)
            self.blocks.append(nn.Sequential(conv_bn_relu(prev + skip, out), conv_bn_relu(out, out)))
            prev = out
        self.out_channels = channels[-1]
        self.out_stride = 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = maps[-1]
        for block, skip in zip(self.blocks, self.skip_index):
            if skip >= 0:
                x = F.interpolate(x, size=maps[skip].shape[-2:], mode="nearest")
                x = torch.cat([x, maps[skip]], dim=1)
            else:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x)
        return x
