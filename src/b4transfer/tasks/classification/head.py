"""Classification head: pooled backbone features -> dropout -> linear.

The head owns everything task-specific: its loss (cross-entropy with optional label
smoothing, or BCE-with-logits for multi-label data; optional per-class weights, or focal loss,
see :mod:`b4transfer.tasks.classification.losses`), how logits become probabilities,
and the torchmetrics it reports. The backbone hands it pooled pre-logits features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from b4transfer.errors import UserError
from b4transfer.tasks.classification.losses import LOSSES, focal_loss


class ClassificationHead(nn.Module):
    """Dropout + linear classifier over pooled features.

    Args:
        in_features: width of the pooled features (the backbone's ``num_features``).
        num_classes: number of classes (>= 2).
        drop_rate: dropout before the linear layer.
        multi_label: several labels per image (sigmoid + BCE) instead of one (softmax + CE).
        label_smoothing: label smoothing for the loss, in [0, 1).
        loss: ``ce`` (cross-entropy; BCE for multi-label) or ``focal``.
        gamma: the focal loss's focusing parameter.
        class_weights: one loss weight per class, or ``None``.
    """


    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        drop_rate: float = 0.0,
        multi_label: bool = False,
        label_smoothing: float = 0.0,
        loss: str = "ce",
        gamma: float = 2.0,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes must be >= 2, got {num_classes}.")
        if not 0.0 <= drop_rate < 1.0:
            raise UserError(f"head.drop_rate must be in [0, 1), got {drop_rate}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"head.label_smoothing must be in [0, 1), got {label_smoothing}.")
        if loss not in LOSSES:
            raise UserError(f"loss.name={loss} is not a loss; use one of {', '.join(LOSSES)}.")
        if gamma < 0:
            raise UserError(f"loss.gamma={gamma} must be >= 0 (2 is the usual focal loss).")
        if class_weights is not None and len(class_weights) != num_classes:
            raise UserError(f"loss.class_weights has {len(class_weights)} weights for {num_classes} classes.")
        self.loss_name, self.gamma = loss, float(gamma)
        # not in the state dict: rebuilt from the hyper-parameters, and the export stays plain timm
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.label_smoothing = label_smoothing
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)
        # calibration fitted on validation after training (calibration.py): not weights, hyper-parameters
        self.temperature = 1.0
        self.thresholds: list[float] | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (N, C) -> (N, K)
        return self.fc(self.drop(features))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss for a batch; ``target`` is class indices (N,), or (N, K) soft/multi-hot targets."""
        weight = self.class_weights
        if self.loss_name == "focal":
            return focal_loss(logits, target, gamma=self.gamma, weight=weight,
                              label_smoothing=self.label_smoothing, multi_label=self.multi_label)
        if self.multi_label:
            target = target.float()
            if self.label_smoothing:
                target = target * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        # (N, K) soft targets come from mixup/cutmix; cross_entropy handles both forms.
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid (multi-label) or softmax of ``logits / temperature`` (1 until calibrated)."""
        return torch.sigmoid(logits) if self.multi_label else (logits / self.temperature).softmax(dim=-1)

    def decisions(self, probs: torch.Tensor) -> torch.Tensor:
        """Multi-label: which labels are on, each at its calibrated threshold (0.5 until calibrated)."""
        thresholds = torch.tensor(self.thresholds or [0.5] * self.num_classes, dtype=probs.dtype)
        return probs >= thresholds.to(probs.device)

    def build_metrics(self) -> MetricCollection:
        """Metrics updated with ``(logits, target)``; keys become ``val/<key>``."""
        k = self.num_classes
        if self.multi_label:
            return MetricCollection(
                {
                    "acc1": MultilabelAccuracy(num_labels=k),
                    "f1_macro": MultilabelF1Score(num_labels=k, average="macro"),
                    "map": MultilabelAveragePrecision(num_labels=k, average="macro"),
                    "acc_per_class": MultilabelAccuracy(num_labels=k, average=None),
                }
            )
        metrics = {
            "acc1": MulticlassAccuracy(num_classes=k, top_k=1, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes=k, average="macro"),
            "acc_per_class": MulticlassAccuracy(num_classes=k, average=None),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes=k),
        }
        if k >= 5:
            metrics["acc5"] = MulticlassAccuracy(num_classes=k, top_k=5, average="micro")
        return MetricCollection(metrics)
