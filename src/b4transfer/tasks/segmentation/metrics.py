"""Segmentation metrics from torchmetrics, accumulated over the whole split (DDP-synced): per-class IoU
(``MulticlassJaccardIndex``), pixel accuracy (``MulticlassAccuracy``, micro); mIoU and mean Dice over the
classes that occur (in the labels or the predictions) — Dice per class is ``2 IoU / (1 + IoU)``.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


def build_metrics(num_classes: int, ignore_index: int) -> MetricCollection:
    """The metrics of one split; ``update(pred classes (N, H, W), target (N, H, W))``."""
    return MetricCollection(
        {
            "iou": MulticlassJaccardIndex(
                num_classes,
                average="none",
                ignore_index=ignore_index,
                zero_division=math.nan,
                validate_args=False,
            ),
            "pixel_acc": MulticlassAccuracy(
                num_classes, average="micro", ignore_index=ignore_index, validate_args=False
            ),
        }
    )


def summarize(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``miou``, ``pixel_acc``, ``dice`` and the per-class ``iou`` / ``dice`` (NaN: class absent)."""
    iou = values["iou"].float()
    dice = 2 * iou / (1 + iou)
    return {
        "miou": iou.nanmean(),
        "pixel_acc": values["pixel_acc"].float(),
        "dice": dice.nanmean(),
        "iou_per_class": iou,
        "dice_per_class": dice,
    }
