"""Hinton et al.'s distillation loss: soft targets at a temperature plus the hard-label loss.

``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * hard``, the class dimension
being ``dim=1`` (``(N, K)`` logits, or ``(N, K, H, W)`` for per-pixel distillation, averaged over the
pixels that ``valid`` keeps). The ``T^2`` keeps the soft term's gradients on the scale of the hard term's
as ``T`` changes. For multi-label outputs each class is its own two-way softmax (sigmoids).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hinton_loss", "soft_target_loss"]


def soft_target_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    *,
    multi_label: bool = False,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` at temperature ``T``, averaged over the images (and the pixels
    ``valid`` keeps, ``(N, H, W)`` booleans, for dense logits)."""
    s, t = student.float() / temperature, teacher.float().detach() / temperature
    if multi_label:  # per class: KL of two Bernoullis, up to the teacher's entropy (constant)
        per_item = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t), reduction="none")
        per_item = per_item - F.binary_cross_entropy_with_logits(t, torch.sigmoid(t), reduction="none")
        per_item = per_item.sum(dim=1)
    else:
        per_item = F.kl_div(
            F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="none"
        )
        per_item = per_item.sum(dim=1)  # (N,) or (N, H, W)
    if valid is not None:
        per_item = per_item[valid]
    return per_item.mean() * temperature**2 if per_item.numel() else per_item.sum()


def hinton_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    hard: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    multi_label: bool = False,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(loss, soft term)``: ``alpha * soft + (1 - alpha) * hard`` (``hard``: the task's own loss on the
    labels); ``teacher=None`` (``alpha=0``): the hard loss alone."""
    if teacher is None or alpha == 0:
        return hard, None
    soft = soft_target_loss(student, teacher, temperature, multi_label=multi_label, valid=valid)
    return alpha * soft + (1.0 - alpha) * hard, soft
