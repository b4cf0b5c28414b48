"""The segmentation head (a decoder over the backbone's maps + a classifier) and the standalone
:class:`Segmenter` (backbone + head + normalisation) the exports hold.

The head sizes itself from the backbone's ``feature_info`` (channels and strides of the maps it returns):
no channel count is written anywhere. Its logits are upsampled (bilinear) to the input size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from b4transfer.backbone import feature_channels, feature_reductions
from b4transfer.errors import UserError
from b4transfer.tasks.segmentation.fpn_decoder import SemanticFPNDecoder
from b4transfer.tasks.segmentation.unet_decoder import UNetDecoder

DECODERS = ("fpn", "unet")
DEFAULT_STRIDES = {"fpn": (4, 8, 16, 32), "unet": (2, 4, 8, 16, 32)}
SETTINGS = ("decoder", "feature_strides", "fpn_channels", "seg_channels", "decoder_channels", "dropout")


def check_head(head: dict[str, Any] | None) -> dict[str, Any]:
    """``head.*`` with defaults filled in; unknown keys and decoders refused."""
    head = {k: v for k, v in dict(head or {}).items() if v is not None}
    unknown = sorted(set(head) - set(SETTINGS))
    if unknown:
        raise UserError(f"head has unknown key(s) {unknown} for semantic masks. Fix: use {list(SETTINGS)}.")
    decoder = head.setdefault("decoder", "fpn")
    if decoder not in DECODERS:
        raise UserError(f"head.decoder={decoder!r} is not a decoder; choose one of {', '.join(DECODERS)}.")
    head.setdefault("feature_strides", list(DEFAULT_STRIDES[decoder]))
    return head


class SegmentationHead(nn.Module):
    """Decoder + dropout + classifier: backbone maps -> ``(N, K, H, W)`` logits at the input size.

    Args:
        in_channels: Channels of the backbone maps, finest first.
        strides: Their strides, ascending.
        num_classes: Number of classes ``K``.
        decoder: ``fpn`` (semantic FPN, classifier at stride 4) or ``unet`` (classifier at stride 1).
        fpn_channels, seg_channels: Semantic FPN widths.
        decoder_channels: U-Net block widths, coarsest first.
        dropout: Channel dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        num_classes: int,
        *,
        decoder: str = "fpn",
        fpn_channels: int = 128,
        seg_channels: int = 128,
        decoder_channels=None,
        dropout: float = 0.0,
        feature_strides=None,
    ) -> None:
        super().__init__()
        if decoder == "unet":
            self.decoder = UNetDecoder(in_channels, strides, decoder_channels=decoder_channels)
        else:
            self.decoder = SemanticFPNDecoder(
                in_channels, strides, fpn_channels=fpn_channels, seg_channels=seg_channels
            )
        self.dropout = nn.Dropout2d(float(dropout)) if dropout else nn.Identity()
        kernel = 3 if decoder == "unet" else 1
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, kernel, padding=kernel // 2)
        if decoder == "unet":  # SMP's segmentation head init (the decoder's own init is in UNetDecoder)
            nn.init.xavier_uniform_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.classifier(self.dropout(self.decoder(maps)))  # (N, K, H/s, W/s)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


def build_head(backbone: nn.Module, num_classes: int, head: dict[str, Any]) -> SegmentationHead:
    """The head for a ``features_only`` ``backbone`` (sized from its ``feature_info``)."""
    strides = feature_reductions(backbone)
    return SegmentationHead(feature_channels(backbone), strides, num_classes, **check_head(head))


class Segmenter(nn.Module):
    """Backbone + head + normalisation: ``(N, 3, H, W)`` images in 0..1 -> ``(N, K, H, W)`` logits.

    The standalone model of the exports (no Lightning): ``encoder`` is the timm ``features_only`` model.
    """

    def __init__(self, encoder: nn.Module, head: SegmentationHead, mean, std) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder((images - self.mean) / self.std), images.shape[-2:])
