"""Mixed precision for detectors: only the convolutions run in bf16, the geometry stays fp32."""

from __future__ import annotations

import torch
from torch import nn


def _low_precision(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dtype in (torch.bfloat16, torch.float16)
    if isinstance(x, dict):
        return any(_low_precision(v) for v in x.values())
    return isinstance(x, (list, tuple)) and any(_low_precision(v) for v in x)


def _fp32(x):
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    if isinstance(x, dict):
        return type(x)((k, _fp32(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(_fp32(v) for v in x)
    return x


def _fp32_outputs(module: nn.Module, args, output):
    """Forward hook: low-precision (autocast) outputs come back as fp32; fp32 ones untouched (None)."""
    return _fp32(output) if _low_precision(output) else None


def fp32_boundaries(detector: nn.Module) -> nn.Module:
    """Under mixed precision (``precision=bf16-mixed`` / ``auto``) only the convolutions run in bf16.

    Autocast would otherwise leak bf16 into the geometry: torchvision's ``AnchorGenerator`` makes the
    anchors in the feature maps' dtype, and ``BoxCoder.decode`` casts the anchors to the regression
    outputs' dtype -- bf16 boxes have 8 significant bits (1 px steps at 256 px), which would move anchor
    matching, the box losses, decoding and NMS. So the FPN's maps and the heads' outputs (RetinaNet /
    FCOS head; Faster R-CNN's RPN head and box predictor) are cast back to fp32 by forward hooks: anchors,
    target encoding, losses, decoding and NMS all run in fp32. In fp32 the hooks change nothing (not
    even an exported graph). No state-dict key changes.
    """
    parts = [detector.backbone]
    if hasattr(detector, "rpn"):
        parts += [detector.rpn.head, detector.roi_heads.box_predictor]
    else:
        parts.append(detector.head)
    for part in parts:
        part.register_forward_hook(_fp32_outputs)
    return detector
