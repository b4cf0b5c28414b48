"""The semantic FPN decoder (Kirillov et al., "Panoptic Feature Pyramid Networks", the semantic branch).

torchvision's ``FeaturePyramidNetwork`` over the backbone's maps (sized from ``feature_info``); each FPN
level goes through ``conv3x3 -> GroupNorm -> ReLU -> 2x upsample`` blocks until it reaches the finest
level's stride (one block for the finest level itself), and the levels are summed there (stride 4 with
the default strides 4, 8, 16, 32). The classifier and the final upsampling are the head's.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


def conv_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """``conv3x3 -> GroupNorm(32, or fewer groups for narrow layers) -> ReLU``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class SemanticFPNDecoder(nn.Module):
    """Backbone maps -> one ``(N, seg_channels, H / s0, W / s0)`` map at the finest stride ``s0``.

    Args:
        in_channels: Channels of each backbone map, finest first (``feature_info.channels()``).
        strides: Their strides, ascending (e.g. 4, 8, 16, 32).
        fpn_channels: FPN width.
        seg_channels: Width of the upsampling branches and of the output.
    """

    def __init__(
        self, in_channels: list[int], strides: list[int], *, fpn_channels: int = 128, seg_channels: int = 128
    ) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        self.branches = nn.ModuleList()
        for stride in strides:
            steps = max(1, round(math.log2(stride / strides[0])))
            blocks = [
                conv_norm_relu(fpn_channels if i == 0 else seg_channels, seg_channels) for i in range(steps)
            ]
            self.branches.append(nn.ModuleList(blocks))
        self.out_channels = seg_channels
        self.out_stride = strides[0]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = list(self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps))).values())
        sizes = [m.shape[-2:] for m in levels]
        out = None
        for i, (blocks, x) in enumerate(zip(self.branches, levels)):
            for j, block in enumerate(blocks):
                x = block(x)
                if i > 0:  # 2x towards the next finer level (its exact size: odd input sizes round)
                    x = F.interpolate(x, size=sizes[i - j - 1], mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return out
