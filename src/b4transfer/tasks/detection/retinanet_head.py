"""RetinaNet's classification + box heads, optionally as torchvision's "v2" recipe.

torchvision's ``retinanet_resnet50_fpn_v2`` differs from the original RetinaNet head in two places:
GroupNorm(32) after every 3x3 conv of both heads, and a GIoU box loss instead of L1 on the encoded
deltas. Both are torchvision's own code (``RetinaNetHead(norm_layer=...)``, the regression head's
``_loss_type``); this module only picks them from ``head.head_norm`` / ``head.box_loss`` and refuses
values that cannot work, before training starts.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.detection.retinanet import RetinaNetHead

from b4transfer.errors import UserError

HEAD_NORMS = (None, "group")
BOX_LOSSES = (None, "l1", "smooth_l1", "giou", "diou", "ciou")  # torchvision's _box_loss types


def retinanet_head(
    detector: str, channels: int, num_anchors: int, num_classes: int, head_norm, box_loss
) -> RetinaNetHead | None:
    """The RetinaNet head for these settings; ``None`` where torchvision's default head is meant."""
    if head_norm is None and box_loss is None:
        return None
    if detector != "retinanet":
        raise UserError(
            f"head.head_norm={head_norm!r} / head.box_loss={box_loss!r} apply to RetinaNet's heads only, "
            f"and head.detector={detector!r} (FCOS's heads already use GroupNorm and a GIoU loss). "
            "Fix: leave both null for this detector."
        )
    if head_norm not in HEAD_NORMS:
        raise UserError(f"head.head_norm={head_norm!r} is not one of {list(HEAD_NORMS)}. Fix: null or group.")
    if box_loss not in BOX_LOSSES:
        raise UserError(f"head.box_loss={box_loss!r} is not one of {list(BOX_LOSSES)}.")
    if head_norm == "group" and channels % 32:
        raise UserError(
            f"head.head_norm=group needs head.fpn_channels divisible by 32 (GroupNorm(32)), got {channels}."
        )
    norm = partial(nn.GroupNorm, 32) if head_norm == "group" else None
    head = RetinaNetHead(channels, num_anchors, num_classes, norm_layer=norm)
    if box_loss is not None:
        head.regression_head._loss_type = box_loss
    return head
