"""``mode=distill`` for segmentation: the Hinton loss per pixel.

The student is a :class:`SegmentationModule` of any timm ``features_only`` backbone; the teacher (a
segmentation run directory or checkpoint) sees the same training batch (images in 0..1: each model
normalises with its own mean / std) and gives logits at the same size. The soft term is averaged over the
pixels the mask does not ignore, on the fly under ``no_grad`` (the masks' augmentation is random).
Pseudo-labels (``distill.unlabeled``) are not implemented for segmentation and are refused up front.
"""

from __future__ import annotations

import torch
from torch import nn

from b4transfer.distill.base import Distillation, DistilledStudent
from b4transfer.distill.loss import hinton_loss
from b4transfer.distill.settings import DistillSettings
from b4transfer.distill.teacher import Teacher, TeacherSpec
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.tasks.segmentation.module import SegmentationModule

__all__ = ["DistilledSegmenter", "SegmentationDistillation"]


class DistilledSegmenter(DistilledStudent, SegmentationModule):
    """A :class:`SegmentationModule` trained with the per-pixel Hinton loss; its checkpoint loads as the
    plain module.

    Args:
        distill: ``alpha``, ``temperature`` and, for the record, ``teacher`` (its path).
        **kwargs: The :class:`SegmentationModule` arguments.
    """

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        logits = self(images)
        hard = self.criterion(logits, masks)
        teacher = None
        if self.alpha > 0:
            with torch.no_grad():
                teacher = self.teacher.value(images)
        loss, soft = hinton_loss(
            logits, teacher, hard, alpha=self.alpha, temperature=self.temperature,
            valid=masks != self.ignore_index,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log("train/hard_loss", hard, batch_size=len(images))
        if soft is not None:
            self.log("train/soft_loss", soft, batch_size=len(images))
        return loss


class _TeacherMasks(nn.Module):
    def __init__(self, model: nn.Module, order: list[int] | None) -> None:
        super().__init__()
        self.model, self.order = model.eval().requires_grad_(False), order

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)  # (N, K, H, W)
        return logits[:, self.order] if self.order is not None else logits


class SegmentationDistillation(Distillation):
    """What ``mode=distill`` asks the segmentation task for (see :mod:`b4transfer.modes.distill`)."""

    student_class = DistilledSegmenter

    def __init__(self, spec: TeacherSpec, settings: DistillSettings) -> None:
        super().__init__(spec, settings)
        if settings.unlabeled:
            raise NotSupportedError(
                f"task=segmentation does not support distill.unlabeled={settings.unlabeled} (pseudo-label "
                "masks are not implemented); it supports distill.unlabeled=null."
            )
        if spec.kind != "checkpoint":
            raise UserError(
                f"distill.teacher={str(spec.path)!r}: a segmentation teacher is read from its checkpoint. "
                "Fix: pass the teacher's run directory or its .ckpt."
            )

    def view(self, teacher: Teacher, student: DistilledSegmenter) -> nn.Module:
        return _TeacherMasks(teacher.model, self.order)
