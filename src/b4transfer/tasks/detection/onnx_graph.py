"""What the ONNX export and its check read off a torchvision detector (name, classes, label offset,
post-processing settings, canvas size), and :class:`OnnxDetector`, the module that is exported."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from b4transfer.errors import UserError
from b4transfer.tasks.detection.head import DETECTORS

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")

# Why a detector cannot be exported, by b4transfer detector name; None: it can. All three export with
# torch 2.x's TorchScript exporter and torchvision's ONNX-aware code paths (NMS, RoIAlign, top-k).
_REFUSALS: dict[str, str | None] = {"retinanet": None, "fcos": None, "faster_rcnn": None}


def onnx_export_refusal(detector_name: str) -> str | None:
    """Why ``head.detector=<detector_name>`` cannot be exported to ONNX (with alternatives), or ``None``.

    For a config check before training: ``export.format=onnx`` with a refused detector should fail
    at once with this text. Every b4transfer detector (``retinanet``, ``fcos``, ``faster_rcnn``)
    exports today, so this returns ``None`` for all of them.

    Raises:
        ValueError: ``detector_name`` is not a b4transfer detector.
    """
    if detector_name not in _REFUSALS:
        raise UserError(f"Unknown detector {detector_name!r}; choose one of {list(DETECTORS)}.")
    return _REFUSALS[detector_name]


def detector_name(detector: nn.Module) -> str:
    """``retinanet`` / ``fcos`` / ``faster_rcnn`` for a torchvision detector built by ``build_detector``."""
    for name, cls in (("faster_rcnn", FasterRCNN), ("retinanet", RetinaNet), ("fcos", FCOS)):
        if isinstance(detector, cls):
            return name
    raise TypeError(
        f"Expected a torchvision RetinaNet, FCOS or FasterRCNN (build_detector(..., own_body=True) or "
        f"load_exported_detector), got {type(detector).__name__}."
    )


def num_classes(detector: nn.Module) -> int:
    if isinstance(detector, FasterRCNN):
        return detector.roi_heads.box_predictor.cls_score.out_features - 1  # minus background
    return detector.head.classification_head.num_classes


def label_offset(detector: nn.Module) -> int:
    return 1 if isinstance(detector, FasterRCNN) else 0


def detector_settings(detector: nn.Module) -> dict[str, Any]:
    src = detector.roi_heads if isinstance(detector, FasterRCNN) else detector
    return {
        "score_thresh": float(src.score_thresh),
        "nms_thresh": float(src.nms_thresh),
        "detections_per_img": int(src.detections_per_img),
    }


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def canvas_size(detector: nn.Module) -> int:
    t = detector.transform
    if len(t.min_size) != 1 or t.min_size[0] != t.max_size:
        raise UserError(
            f"The detector's transform resizes to min_size={t.min_size}, max_size={t.max_size}; an ONNX "
            "export needs one square letterbox size (build_detector sets both to image_size)."
        )
    return int(t.max_size)


class OnnxDetector(nn.Module):
    """``(1, 3, S, S)`` 0..1 canvas -> ``(boxes, scores, labels)`` with 0-based labels: the exported graph."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.label_offset = label_offset(detector)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det = self.detector([image[0]])[0]
        labels = det["labels"] - self.label_offset if self.label_offset else det["labels"]
        return det["boxes"], det["scores"], labels


