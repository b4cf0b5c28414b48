"""Losses for imbalanced classes: per-class weights from the training counts, and focal loss.

``loss.class_weights``: ``auto`` weighs each class by its inverse frequency, ``effective`` by the
inverse of its effective number of samples ``(1 - beta^n) / (1 - beta)`` (Cui et al., "Class-Balanced
Loss Based on Effective Number of Samples", CVPR 2019, beta 0.999), or an explicit list. Both computed
forms are normalised to a mean of 1 over the classes, so the loss keeps its scale.

``loss.name=focal`` is Lin et al.'s focal loss (RetinaNet, ICCV 2017): cross-entropy scaled by
``(1 - p)^gamma`` for each class, which down-weights the examples the model already gets right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from b4transfer.errors import UserError
from b4transfer.training.class_weights import check_class_weights

__all__ = ["EFFECTIVE_BETA", "LOSSES", "WEIGHTINGS", "class_weights", "focal_loss"]

LOSSES = ("ce", "focal")
WEIGHTINGS = ("auto", "effective")
EFFECTIVE_BETA = 0.999


def class_weights(spec: Any, counts: Sequence[int], class_names: Sequence[str]) -> list[float] | None:
    """The per-class loss weights ``loss.class_weights=spec`` asks for, given the training ``counts``.

    Args:
        spec: ``None`` (no weights), ``"auto"``, ``"effective"`` or one finite number >= 0 per class.
        counts: Training images per class.
        class_names: Class names, for the error messages.
    """
    spec = check_class_weights(spec, WEIGHTINGS)  # null, a weighting, or finite weights >= 0
    if spec is None:
        return None
    if isinstance(spec, str):
        n = torch.tensor([max(int(c), 1) for c in counts], dtype=torch.float64)  # an absent class: as if 1
        raw = 1.0 / n if spec == "auto" else (1.0 - EFFECTIVE_BETA) / (1.0 - EFFECTIVE_BETA**n)
        return [round(float(w), 6) for w in raw * len(raw) / raw.sum()]
    if len(spec) != len(counts):
        raise UserError(
            f"loss.class_weights={spec} needs {len(counts)} non-negative weights, one per class in this "
            f"order: {', '.join(class_names)}. Or use loss.class_weights=auto."
        )
    return spec


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    multi_label: bool = False,
) -> torch.Tensor:
    """Mean focal loss of a batch.

    Args:
        logits: ``(N, K)``.
        target: class indices ``(N,)``, or ``(N, K)`` soft (mixup) or multi-hot targets.
        gamma: focusing parameter; 0 gives (weighted) cross-entropy.
        weight: per-class weights ``(K,)``.
        label_smoothing: as in the cross-entropy (multi-label: towards 0.5).
        multi_label: sigmoid per class (torchvision's ``sigmoid_focal_loss``) instead of softmax.
    """
    k = logits.shape[-1]
    if target.ndim == 1:
        target = F.one_hot(target, k)
    target = target.to(logits.dtype)
    if multi_label:
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
        # (N, K) per class; alpha=-1: class balance is the weights' job
        per_class = sigmoid_focal_loss(logits, target, alpha=-1, gamma=gamma, reduction="none")
    else:
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / k
        log_p = logits.log_softmax(dim=-1)
        per_class = -target * (1.0 - log_p.exp()).pow(gamma) * log_p  # (N, K)
    if weight is not None:
        per_class = per_class * weight
    return per_class.mean() if multi_label else per_class.sum(dim=-1).mean()
