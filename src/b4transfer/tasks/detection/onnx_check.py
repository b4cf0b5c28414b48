"""Run an exported detector with onnxruntime and PyTorch on the same canvases: every confident PyTorch
box must be found by ONNX (same label, IoU >= 0.99, score within 1e-3).

Only what is stable is compared: a box whose presence depends on rounding (a score at the threshold or
the top-k cut, or an NMS contest decided by near-equal scores, see :func:`nms_rounding_dependent`) is not
required, since two runtimes may round the same score ~1e-6 apart.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from b4transfer.errors import UserError
from b4transfer.export.artifacts import onnx_session
from b4transfer.tasks.detection.onnx_graph import (
    INPUT_NAME,
    OUTPUT_NAMES,
    canvas_size,
    detector_settings,
    label_offset,
    module_device,
)

log = logging.getLogger(__name__)


def _as_canvases(images, size: int) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    out = []
    for i, img in enumerate(images):
        img = torch.as_tensor(img)
        if img.dim() == 4 and len(img) == 1:
            img = img[0]
        if tuple(img.shape) != (3, size, size):
            raise UserError(
                f"images[{i}] has shape {tuple(img.shape)}; the check needs (3, {size}, {size}) letterbox "
                "canvases, 0..1 floats (or an (N, 3, S, S) batch)."
            )
        out.append(img.detach().float().cpu())
    if not out:
        raise UserError("check_detector_onnx needs at least one image.")
    return out


@contextlib.contextmanager
def _nms_off(detector: nn.Module) -> Iterator[None]:
    """The detector returns every candidate that reaches its NMS (none suppressed, no top-k cut)."""
    src = detector.roi_heads if isinstance(detector, FasterRCNN) else detector
    saved = src.nms_thresh, src.detections_per_img
    src.nms_thresh, src.detections_per_img = 1.0, 1_000_000  # torchvision suppresses IoU > thresh only
    try:
        yield
    finally:
        src.nms_thresh, src.detections_per_img = saved


def nms_rounding_dependent(kept: dict, candidates: dict, *, nms_thresh: float, atol: float) -> torch.Tensor:
    """Which ``kept`` boxes survive NMS only by rounding: per kept box, a bool.

    A candidate is unsettled when a rival (same label, IoU > ``nms_thresh``, not the identical box) has a
    score within ``atol`` of its own (which of the two suppresses the other is a coin toss between
    runtimes), or when a higher-scored rival is unsettled (its fate decides this one's). ``candidates``
    are the same detector's boxes before NMS (:func:`_nms_off`); a kept box not found among them
    bit for bit counts as unsettled.
    """
    from torchvision.ops import box_iou

    boxes, scores, labels = candidates["boxes"], candidates["scores"], candidates["labels"]
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    identical = (boxes[:, None] == boxes[None]).all(-1) & (scores[:, None] == scores[None])
    overlap = box_iou(boxes, boxes).nan_to_num(0.0) > nms_thresh
    rival = overlap & (labels[:, None] == labels[None]) & ~identical
    unsettled = (rival & ((scores[:, None] - scores[None]).abs() <= atol)).any(1)
    for i in range(len(scores)):  # highest score first: the rivals above i are settled already
        unsettled[i] |= bool((rival[i, :i] & unsettled[:i]).any())
    same = (
        (kept["boxes"][:, None] == boxes[None]).all(-1)
        & (kept["scores"][:, None] == scores[None])
        & (kept["labels"][:, None] == labels[None])
    )
    found = same.any(1)
    return ~found | (same & unsettled[None]).any(1)


@torch.no_grad()
def check_detector_onnx(
    detector: nn.Module,
    path: str | Path,
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    min_score: float = 0.05,
    iou: float = 0.99,
    score_atol: float = 1e-3,
    box_atol: float = 0.05,
    min_matched: float = 1.0,
    min_boxes: int = 1,
) -> dict[str, Any]:
    """Run ``path`` with onnxruntime and ``detector`` in PyTorch fp32 eager on the same canvases.

    Every PyTorch box with score >= ``min_score`` must be matched (one to one, best IoU first) by an
    ONNX box with the same label, IoU >= ``iou`` and a score within ``score_atol``. For a box under
    1 px wide or high (e.g. clipped to the canvas edge), where IoU is undefined (0/0) or unstable,
    every coordinate within ``box_atol`` pixels stands in for the IoU. Boxes whose
    presence legitimately depends on rounding are not required: scores within ``score_atol`` of the
    detector's ``score_thresh``; when an image's list is full (``detections_per_img`` boxes),
    scores within ``score_atol`` of its lowest one (the top-k cut); and boxes that won an NMS contest
    by a near-tie (:func:`nms_rounding_dependent`, counted in ``nms_ties``).

    Args:
        detector: The PyTorch detector the file was exported from (eval mode is used, then restored).
        path: The ``.onnx`` file from :func:`export_detector_onnx`.
        images: ``(3, S, S)`` canvases (0..1), a sequence of them or an ``(N, 3, S, S)`` batch.
        min_score: Confidence above which PyTorch boxes must be matched.
        iou: Smallest IoU of a match.
        score_atol: Largest score difference of a match.
        box_atol: Largest coordinate difference (pixels) of a match for a sub-pixel-thin box.
        min_matched: Smallest share of required boxes that must be matched.
        min_boxes: Fewest required boxes; fewer raise (the check would prove nothing). 0 allows none.

    Returns:
        ``{"images", "boxes", "matched", "matched_share", "thin_boxes", "max_score_diff", "min_iou",
        "max_box_diff", "onnx_boxes", "torch_boxes", "min_score", "iou", "score_atol", "nms_ties"}``
        (``boxes``: required PyTorch boxes; ``thin_boxes``: those under 1 px wide or high, matched by
        coordinates; ``nms_ties``: confident boxes not required as NMS near-tie winners; ``min_iou``:
        over the other matches; ``*_boxes``: all boxes each runtime returned).

    Raises:
        RuntimeError: Fewer than ``min_boxes`` required boxes, or a matched share below ``min_matched``.
    """
    from torchvision.ops import box_iou

    size = canvas_size(detector)
    canvases = _as_canvases(images, size)
    settings = detector_settings(detector)
    floor = max(float(min_score), settings["score_thresh"] + score_atol)
    offset = label_offset(detector)
    session = onnx_session(path)
    mode, device = detector.training, module_device(detector)
    detector.eval()
    try:
        refs = [{k: v.cpu() for k, v in detector([x.to(device)])[0].items()} for x in canvases]
        with _nms_off(detector):
            pools = [{k: v.cpu() for k, v in detector([x.to(device)])[0].items()} for x in canvases]
    finally:
        detector.train(mode)

    required = matched = thin = onnx_total = torch_total = ties = 0
    max_score_diff = max_box_diff = 0.0
    min_iou = 1.0
    misses: list[str] = []
    for i, (x, ref, pool) in enumerate(zip(canvases, refs, pools)):
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[None].numpy()})
        boxes, scores, labels = (torch.from_numpy(g) for g in got)
        ref_labels = ref["labels"] - offset
        onnx_total += len(boxes)
        torch_total += len(ref["boxes"])
        need = ref["scores"] >= floor
        if len(ref["scores"]) >= settings["detections_per_img"]:
            need &= ref["scores"] > ref["scores"].min() + score_atol
        tied = need & nms_rounding_dependent(ref, pool, nms_thresh=settings["nms_thresh"], atol=score_atol)
        ties += int(tied.sum())
        need &= ~tied
        taken = torch.zeros(len(boxes), dtype=torch.bool)
        ious = close = None
        if len(boxes) and len(ref["boxes"]):
            ious = box_iou(ref["boxes"], boxes).nan_to_num(0.0)
            close = torch.cdist(ref["boxes"], boxes, p=math.inf) <= box_atol
        sides = ref["boxes"][:, 2:] - ref["boxes"][:, :2]
        for j in torch.nonzero(need).flatten().tolist():
            required += 1
            is_thin = bool(sides[j].min() < 1.0)
            thin += is_thin
            ok = torch.zeros(len(boxes), dtype=torch.bool)
            if ious is not None:
                ok = (
                    ~taken
                    & (labels == ref_labels[j])
                    & (close[j] if is_thin else ious[j] >= iou)
                    & ((scores - ref["scores"][j]).abs() <= score_atol)
                )
            if not ok.any():
                if len(misses) < 5:
                    misses.append(
                        f"image {i}: label {int(ref_labels[j])} score {float(ref['scores'][j]):.4f} "
                        f"box {[round(v, 1) for v in ref['boxes'][j].tolist()]}"
                    )
                continue
            diff = (boxes - ref["boxes"][j]).abs().amax(1)
            k = int(torch.where(ok, -diff if is_thin else ious[j], torch.tensor(-math.inf)).argmax())
            taken[k] = True
            matched += 1
            max_score_diff = max(max_score_diff, float((scores[k] - ref["scores"][j]).abs()))
            max_box_diff = max(max_box_diff, float(diff[k]))
            if not is_thin:
                min_iou = min(min_iou, float(ious[j, k]))
    share = matched / required if required else math.nan
    report = {
        "images": len(canvases),
        "boxes": required,
        "matched": matched,
        "matched_share": share,
        "thin_boxes": thin,
        "nms_ties": ties,
        "max_score_diff": max_score_diff,
        "min_iou": min_iou,
        "max_box_diff": max_box_diff,
        "onnx_boxes": onnx_total,
        "torch_boxes": torch_total,
        "min_score": floor,
        "iou": iou,
        "score_atol": score_atol,
    }
    if required < min_boxes:
        raise RuntimeError(
            f"{path}: the PyTorch detector finds only {required} box(es) with score >= {floor:.3g} on "
            f"{len(canvases)} image(s) (need {min_boxes}), so the ONNX check would prove nothing. Pass "
            "images with objects, a lower min_score, or min_boxes=0 to accept an unchecked export."
        )
    if required and share < min_matched:
        raise RuntimeError(
            f"{path}: onnxruntime matches only {matched}/{required} PyTorch boxes with score >= {floor:.3g} "
            f"(same label, IoU >= {iou}, score within {score_atol}); need {min_matched:.0%}. First misses: "
            f"{'; '.join(misses)}. The export is wrong; report it with your torch/torchvision/onnx/"
            "onnxruntime versions, or use export.format=timm (load_exported_detector)."
        )
    log.info("ONNX detector check %s: %s", path, report)
    return report
