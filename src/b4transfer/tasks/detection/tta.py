"""Detection TTA and box merging: run each view, map its boxes back to the input canvas, merge.

Each view (:mod:`b4transfer.runtime.tta`: mirrored and/or resized canvas) runs through the detector at its own
size (the detector's resize is set to the view's side for the call, so a 0.83x view really is seen
smaller); its boxes are mapped back to the canvas (un-mirrored, divided by the scale), and the boxes of
all views are merged by :func:`merge_boxes`: torchvision's class-wise NMS, then box voting as in
weighted box fusion -- each kept box becomes the score-weighted mean of the boxes it suppressed, and its
score the summed score of that cluster over the number of views (a box found in one view of two keeps
half its score), at most its best score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torchvision.ops import batched_nms, box_iou

from b4transfer.runtime import tta


@contextlib.contextmanager
def input_side(detector: torch.nn.Module, side: int) -> Iterator[None]:
    """Let a torchvision detector take ``side`` x ``side`` inputs as they are (its resize set to ``side``)."""
    transform = getattr(detector, "transform", None)
    if transform is None:
        yield
        return
    saved = transform.min_size, transform.max_size
    transform.min_size, transform.max_size = (side,), side
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


def view_boxes_back(boxes: torch.Tensor, view: tta.View, side: int, canvas: int) -> torch.Tensor:
    """Boxes ``(N, 4)`` xyxy found on a ``side``-pixel view -> the ``canvas``-pixel input."""
    if view.flip:
        boxes = torch.stack([side - boxes[:, 2], boxes[:, 1], side - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes * (canvas / side)


def merge_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, iou: float, views: int, max_det: int
) -> dict[str, torch.Tensor]:
    """Merge detections of several views (or tiles): class-wise NMS at ``iou``, then box voting.

    Args:
        boxes: ``(M, 4)`` xyxy, all in one frame.
        scores: ``(M,)``.
        labels: ``(M,)``.
        iou: Boxes of one class overlapping more than this are one object.
        views: How many views could each have found an object (divides the cluster's summed score);
            1 keeps the best score (tiles: each object is whole in one tile).
        max_det: Keep at most this many, best first.
    """
    if not len(boxes):
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
    keep = batched_nms(boxes, scores, labels, iou)[:max_det]
    same = (box_iou(boxes[keep], boxes) > iou) & (labels[keep, None] == labels[None, :])
    same[torch.arange(len(keep), device=keep.device), keep] = True
    weights = same.to(scores.dtype) * scores[None, :]  # (K, M)
    merged = (weights @ boxes) / weights.sum(1, keepdim=True)
    score = torch.minimum(weights.sum(1) / views, scores[keep])
    return {"boxes": merged, "scores": score, "labels": labels[keep]}


def detect_tta(
    detect, images: Sequence[torch.Tensor], views: Sequence[tta.View], *, detector: torch.nn.Module,
    iou: float, max_det: int,
) -> list[dict[str, torch.Tensor]]:
    """Detections of square canvases ``images`` merged over ``views``, in canvas pixels.

    Args:
        detect: ``list of images -> [{"boxes", "scores", "labels"}]`` in input pixels (the head).
        images: ``(3, S, S)`` canvases.
        views: The TTA views.
        detector: The torchvision detector ``detect`` runs (its resize follows each view's side).
        iou: NMS IoU of the merge (the head's ``nms_thresh``).
        max_det: Detections kept per image (the head's ``detections_per_img``).
    """
    batch = torch.stack(list(images))
    canvas = batch.shape[-1]
    found: list[list[dict]] = [[] for _ in images]
    for view in views:
        seen = tta.apply(view, batch)
        side = seen.shape[-1]
        with input_side(detector, side):
            dets = detect(list(seen))
        for i, d in enumerate(dets):
            found[i].append({**d, "boxes": view_boxes_back(d["boxes"], view, side, canvas)})
    return [
        merge_boxes(
            torch.cat([d["boxes"] for d in per_view]),
            torch.cat([d["scores"] for d in per_view]),
            torch.cat([d["labels"] for d in per_view]),
            iou=iou, views=len(views), max_det=max_det,
        )
        for per_view in found
    ]
