"""The schema of ``task=segmentation``'s config: its ``data`` (``conf/data/_seg_common.yaml``, seg_folder,
voc_seg, coco and the demo), ``head`` and ``loss`` (``conf/task/segmentation.yaml``)."""

from dataclasses import dataclass
from typing import Any

from b4transfer.settings import DenseDataSettings, RunSettings, Schema, given


@dataclass
class MaskDataSettings(DenseDataSettings):
    """Per-pixel classes: image + mask folders, Pascal VOC, COCO rendered to masks, or the demo."""

    resize: str = given()  # letterbox | stretch
    ignore_index: int = given()
    palette: list[list[int]] | None = given()  # data=seg_folder: RGB masks


@dataclass
class SegmentationHeadSettings(Schema):
    """``head``: a semantic FPN or U-Net decoder over the backbone maps."""

    decoder: str = given()  # fpn | unet
    feature_strides: list[int] | None = given()
    fpn_channels: int = given()
    seg_channels: int = given()
    decoder_channels: list[int] | None = given()
    dropout: float = given()


@dataclass
class SegmentationLossSettings(Schema):
    """``loss``: cross-entropy (+ soft Dice)."""

    class_weights: Any = given()  # null | auto | [w1, w2, ...]
    dice_weight: float = given()


@dataclass
class SegmentationSettings(RunSettings):
    """``task=segmentation``."""

    data: MaskDataSettings = given()
    head: SegmentationHeadSettings = given()
    loss: SegmentationLossSettings = given()
