"""Do the anchors fit the training boxes? A check at start-up, with suggested ``head.anchor_sizes``.

An anchor-based detector (RetinaNet, Faster R-CNN's RPN) learns a box as a positive only where an
anchor overlaps it enough (IoU >= 0.5 for RetinaNet, 0.7 for the RPN). For a square box of side
``b`` and a square anchor of side ``a`` centred alike, IoU = ``(min(a, b) / max(a, b)) ** 2``, so the
anchors of sizes ``a_min .. a_max`` cover box sides from ``a_min * sqrt(t)`` to ``a_max / sqrt(t)``.
Boxes outside that range are matched only as torchvision's "low-quality" best matches: one anchor
each, a weak signal (and an IoU-0.5 evaluation then needs the regression to stretch far). This
module measures the training boxes on the letterboxed canvas (where the detector sees them) and,
when many fall outside, suggests the default anchors scaled to cover them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

FG_IOU = {"retinanet": 0.5, "faster_rcnn": 0.7}  # torchvision's defaults (RetinaNet, RPN)
WARN_SHARE = 0.1  # warn when more than this share of training boxes is outside the covered range


def box_sides(samples: Sequence, image_size: int) -> np.ndarray:
    """``sqrt(w * h)`` of every non-crowd box of ``samples`` on the ``image_size`` letterbox canvas."""
    sides = []
    for s in samples:
        boxes = np.asarray(s.boxes, np.float64).reshape(-1, 4)[np.asarray(s.iscrowd).reshape(-1) == 0]
        scale = image_size / max(s.size)
        wh = (boxes[:, 2:] - boxes[:, :2]).clip(min=0) * scale
        sides.extend(np.sqrt(wh[:, 0] * wh[:, 1]).tolist())
    return np.asarray(sides)


def anchor_fit(
    sides: np.ndarray, anchor_sizes: Sequence[Sequence[float]], detector: str
) -> dict[str, object] | None:
    """How many box sides the anchors cover, and a suggestion when too many are outside.

    Args:
        sides: Box sides in canvas pixels (:func:`box_sides`).
        anchor_sizes: The detector's anchor sizes, one list per level.
        detector: ``retinanet`` / ``faster_rcnn`` (``None`` is returned for anchor-free FCOS).

    Returns:
        ``None`` without boxes or for an anchor-free detector; else a dict with the percentiles of the
        box sides, the covered range, the share of boxes outside it and, when that share exceeds
        :data:`WARN_SHARE`, ``suggested_anchor_sizes`` (the anchors scaled by one factor).
    """
    if detector not in FG_IOU or len(sides) == 0:
        return None
    root = math.sqrt(FG_IOU[detector])
    a_min = min(min(level) for level in anchor_sizes)
    a_max = max(max(level) for level in anchor_sizes)
    low, high = a_min * root, a_max / root
    outside = float(np.mean((sides < low) | (sides > high)))
    p02, p50, p98 = (float(v) for v in np.percentile(sides, [2, 50, 98]))
    report: dict[str, object] = {
        "box_side_p02_p50_p98": [round(p02, 1), round(p50, 1), round(p98, 1)],
        "anchor_range": [a_min, a_max],
        "covered_sides": [round(low, 1), round(high, 1)],
        "share_outside": round(outside, 3),
    }
    if outside > WARN_SHARE:
        factor = p02 / low if p02 < low else p98 / high
        report["suggested_anchor_sizes"] = [
            [max(1, round(a * factor)) for a in level] for level in anchor_sizes
        ]
    return report


def warn_if_unfit(report: dict[str, object] | None) -> None:
    """One warning naming the numbers and the fix when :func:`anchor_fit` made a suggestion."""
    if not report or "suggested_anchor_sizes" not in report:
        return
    low, high = report["covered_sides"]
    suggestion = str(report["suggested_anchor_sizes"]).replace(" ", "")
    log.warning(
        "%.0f%% of the training boxes are outside the sides the anchors cover (%s-%s px on the "
        "letterboxed canvas; box sides p2/p50/p98: %s px): they are learned only as low-quality "
        "matches. HINT: head.anchor_sizes='%s' (the default anchors scaled to the boxes), or a "
        "larger/smaller data.image_size.",
        100 * float(report["share_outside"]), low, high, report["box_side_p02_p50_p98"], suggestion,
    )
