"""Cross-entropy with an ignore index, an optional soft Dice term and optional class weights.

``loss.class_weights``: ``null``, ``auto`` (each class weighted by its inverse share of the training
pixels, mean 1 over the classes present) or a list in class order. ``loss.dice_weight``: the weight of
``1 - mean soft Dice`` (softmax, over the classes present in the batch, ignored pixels left out) added to
the cross-entropy.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from b4transfer.errors import UserError
from b4transfer.training.class_weights import check_class_weights


def pixel_class_weights(spec, pixels: list[int], class_names: list[str]) -> list[float] | None:
    """The resolved ``loss.class_weights`` (one float per class) or ``None``."""
    given, spec = spec, check_class_weights(spec, ("auto",))  # null, auto, or finite weights >= 0
    if spec is None:
        return None
    if spec == "auto":
        present = [c for c in pixels if c > 0]
        if not present:
            return None
        total = sum(present)
        raw = [total / c if c > 0 else 0.0 for c in pixels]
        mean = sum(raw) / len(present)
        return [round(w / mean, 6) for w in raw]
    if len(spec) != len(class_names):
        raise UserError(
            f"loss.class_weights={given!r}: give null, auto (inverse pixel frequency), or {len(class_names)} "
            f"weights >= 0, one per class in the order {class_names}."
        )
    return spec


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``1 - mean soft Dice`` over the classes present in ``target`` (ignored pixels left out)."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # (N, 1, H, W)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2) * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


class SegmentationLoss(nn.Module):
    """``CE(ignore_index, weight) + dice_weight * soft Dice``.

    Args:
        ignore_index: Mask value left out of the loss.
        class_weights: One weight per class, or ``None``.
        dice_weight: Weight of the Dice term (0: cross-entropy only).
    """

    def __init__(self, *, ignore_index: int = 255, class_weights=None, dice_weight: float = 0.0) -> None:
        super().__init__()
        if isinstance(dice_weight, bool) or not isinstance(dice_weight, numbers.Real) or dice_weight < 0:
            raise UserError(
                f"loss.dice_weight must be a number >= 0, got {dice_weight!r}. Fix: e.g. 0.5, or 0."
            )
        self.ignore_index, self.dice_weight = int(ignore_index), float(dice_weight)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target[target != self.ignore_index].clamp(0, logits.shape[1] - 1)
        weight = valid.numel() if self.weight is None else self.weight[valid].sum()
        if weight == 0:  # every pixel ignored (a crop of padding only) or weighted 0: nothing to learn
            loss = logits.sum() * 0
        else:  # a NaN here would be a real fault (the weights are checked finite): it is left to surface
            loss = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.ignore_index)
        return loss
