"""The body + FPN that torchvision's detectors take as their ``backbone`` (an ``out_channels`` module)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from b4transfer.backbone import feature_channels


class FeaturePyramidBackbone(nn.Module):
    """timm ``features_only`` body + FPN: the ``out_channels`` interface torchvision detectors take.

    Args:
        body: A ``create_backbone(..., features_only=True)`` model.
        out_channels: FPN width.
        extra_blocks: torchvision extra FPN levels (``LastLevelP6P7`` / ``LastLevelMaxPool``).
        own_body: Register ``body`` as a submodule (standalone detector); else keep a plain
            reference (the LightningModule owns it as ``self.backbone``).
    """

    def __init__(
        self, body: nn.Module, *, out_channels: int, extra_blocks: nn.Module, own_body: bool
    ) -> None:
        super().__init__()
        self.in_channels_list = feature_channels(body)
        self.fpn = FeaturePyramidNetwork(self.in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        if own_body:
            self.body = body
        else:
            self.__dict__["_shared_body"] = body  # not a submodule: no second copy of its parameters

    def get_body(self) -> nn.Module:
        """The timm feature extractor."""
        return self._modules["body"] if "body" in self._modules else self.__dict__["_shared_body"]

    def share_body(self, body: nn.Module) -> None:
        """Point a shared (unregistered) body reference at ``body``, e.g. after its owner replaced it."""
        if "body" not in self._modules:
            self.__dict__["_shared_body"] = body

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.get_body()(x)  # [(N, C_i, H/s_i, W/s_i)] for strides s_i ascending
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
