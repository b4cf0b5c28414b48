"""A score threshold per class, chosen on the validation split after training: for each class the
threshold that maximises its F1 (a detection is a true positive when it matches an unmatched
ground-truth box of its class at IoU >= 0.5, highest score first). Stored in the checkpoint's
hyper-parameters (``calibration.score_thresholds``) and applied by ``mode=predict`` to what it draws
and keeps (``predictions_kept``); the COCO results JSON keeps every box (mAP needs them)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torchvision.ops import box_iou

log = logging.getLogger(__name__)

__all__ = ["best_thresholds", "calibrate_detector", "match"]


def match(pred: dict, target: dict, *, iou: float = 0.5) -> torch.Tensor:
    """Which predictions (scores descending order as given) are true positives against ``target``;
    crowd boxes are neither matched nor missed."""
    keep = target.get("iscrowd", torch.zeros(len(target["labels"]), dtype=torch.long)) == 0
    gt_boxes, gt_labels = target["boxes"][keep], target["labels"][keep]
    tp = torch.zeros(len(pred["scores"]), dtype=torch.bool)
    if not len(gt_boxes) or not len(pred["boxes"]):
        return tp
    ious = box_iou(pred["boxes"].float(), gt_boxes.float())
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for i in pred["scores"].argsort(descending=True).tolist():
        ok = (gt_labels == pred["labels"][i]) & ~taken & (ious[i] >= iou)
        if ok.any():
            j = int(torch.where(ok, ious[i], torch.full_like(ious[i], -1)).argmax())
            taken[j], tp[i] = True, True
    return tp


def best_thresholds(scores, tps, labels, gt_counts, *, num_classes: int, default: float) -> list[float]:
    """Per class, the score threshold with the highest F1 (``default`` for a class with no prediction
    or no ground truth)."""
    out = []
    for c in range(num_classes):
        mine = labels == c
        s, t = scores[mine], tps[mine]
        if not len(s) or not gt_counts[c]:
            out.append(default)
            continue
        order = s.argsort(descending=True)
        s, t = s[order], t[order].float()
        tp = t.cumsum(0)
        fp = (1 - t).cumsum(0)
        f1 = 2 * tp / (2 * tp + fp + (gt_counts[c] - tp))
        out.append(round(float(s[int(f1.argmax())]), 6))
    return out


@torch.no_grad()
def calibrate_detector(module, loader, *, default: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose the thresholds on ``loader`` (the validation canvases); set them on ``module``."""
    module.eval()
    scores, tps, labels = [], [], []
    gt_counts = torch.zeros(len(module.class_names), dtype=torch.long)
    for images, targets in loader:
        for pred, target in zip(module.head(list(images)), targets):
            scores.append(pred["scores"].cpu())
            labels.append(pred["labels"].cpu())
            tps.append(match({k: v.cpu() for k, v in pred.items()}, target))
            keep = target.get("iscrowd", torch.zeros_like(target["labels"])) == 0
            gt_counts += torch.bincount(target["labels"][keep], minlength=len(module.class_names))
    thresholds = best_thresholds(torch.cat(scores), torch.cat(tps), torch.cat(labels), gt_counts,
                                 num_classes=len(module.class_names), default=default)
    stored = {"score_thresholds": dict(zip(module.class_names, thresholds))}
    module.set_calibration(stored)
    log.info("Calibration: per-class score thresholds %s (validation F1)", stored["score_thresholds"])
    return stored, {**stored, "iou": 0.5, "val_boxes": int(gt_counts.sum()), "default": default}
