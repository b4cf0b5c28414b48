"""Sliced inference for small objects (``predict.slice=SIZE predict.slice_overlap=0.2``), as SAHI does it.

Each image is cut into ``SIZE`` x ``SIZE`` tiles (original pixels) overlapping by ``slice_overlap`` of a
tile, the last row / column flush with the image edge. Every tile -- and the whole image, for objects
larger than a tile -- is letterboxed to the model's canvas and detected on its own, so an object in a
4000 px photo is seen ``4000 / SIZE`` times larger than the whole-image pass sees it. The tiles'
boxes are moved by their tile's offset into original-image pixels and merged (:func:`merge_tiles`):
torchvision's class-wise NMS at ``head.nms_thresh``, then suppression by intersection over the smaller
box (SAHI's match metric), so the piece of a large object that a tile edge cut off does not survive as
a second detection beside the whole one. (SAHI's default *unites* such boxes instead; measured on the
mosaic study, uniting the low-score boxes that mAP keeps grew boxes over whole groups of objects:
AP 0.001 against 0.335 with suppression -- scripts/slicing_study.py.)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.ops import batched_nms, box_area

from b4transfer.data.boxes import make_sample
from b4transfer.data.images import load_rgb, upright_size
from b4transfer.errors import UserError
from b4transfer.tasks.detection.data.transforms import DetectionTransform


def check_slice(size: Any, overlap: Any) -> tuple[int | None, float]:
    """``(predict.slice, predict.slice_overlap)`` checked."""
    if size is None:
        return None, 0.0
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise UserError(
            f"predict.slice={size!r} must be a tile side in pixels >= 32 (e.g. predict.slice=640), or null."
        )
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < 1:
        raise UserError(f"predict.slice_overlap={overlap!r} must be a share of a tile in [0, 1), e.g. 0.2.")
    return size, float(overlap)


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along one side: every ``tile * (1 - overlap)`` pixels, the last flush with the end."""
    if length <= tile:
        return [0]
    step = max(1, round(tile * (1 - overlap)))
    out = list(range(0, length - tile, step))
    return out + [length - tile]


def tiles(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the whole image, then of every tile (clipped to the image)."""
    whole = [(0, 0, width, height)]
    if width <= tile and height <= tile:
        return whole
    return whole + [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in starts(height, tile, overlap)
        for x in starts(width, tile, overlap)
    ]


def _inside_suppression(boxes: torch.Tensor, ios: float) -> list[int]:
    """Greedy suppression (best first) of the boxes lying more than ``ios`` inside a kept one (intersection
    over the smaller box); the indices kept."""
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = box_area(boxes)
    match = inter > ios * torch.minimum(area[:, None], area[None, :])
    dead = torch.zeros(len(boxes), dtype=torch.bool)
    kept = []
    for i in range(len(boxes)):
        if not dead[i]:
            kept.append(i)
            dead |= match[i]
    return kept


def merge_tiles(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, iou: float = 0.5, ios: float = 0.5,
    max_det: int = 100,
) -> dict[str, torch.Tensor]:
    """The detections of all tiles in one frame -> one set: torchvision's class-wise NMS at ``iou`` (the
    copies of an object that overlapping tiles both saw), then, class by class, suppression of the boxes
    lying more than ``ios`` inside a better one (intersection over the smaller box: the piece of a large
    object that a tile edge cut off). At most ``max_det``, best first."""
    keep = batched_nms(boxes, scores, labels, iou)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]  # best first
    kept = []
    for label in labels.unique().tolist():
        idx = torch.nonzero(labels == label).flatten()
        kept.append(idx[_inside_suppression(boxes[idx], ios)])
    order = torch.cat(kept) if kept else keep[:0]
    order = order[scores[order].argsort(descending=True)][:max_det]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


class TileDataset(Dataset):
    """``dataset[i] -> (canvas, meta)`` for every tile of every image (the whole image first), letterboxed
    to ``image_size``; ``meta`` maps the detections back to the tile's pixels (``scale``, ``orig_size``)."""

    def __init__(
        self, paths: Sequence[str | Path], image_size: int, fill: tuple[int, int, int], *, tile: int,
        overlap: float,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = DetectionTransform(image_size, fill=fill, train=False)
        self.items: list[tuple[int, tuple[int, int, int, int]]] = [
            (i, box) for i, p in enumerate(self.paths) for box in tiles(*upright_size(p), tile, overlap)
        ]
        self._cached: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, index: int):
        if self._cached is None or self._cached[0] != index:  # tiles of one image come in a row
            self._cached = (index, load_rgb(self.paths[index]))
        return self._cached[1]

    def __getitem__(self, item: int):
        index, (x0, y0, x1, y1) = self.items[item]
        crop = self._image(index).crop((x0, y0, x1, y1))
        tensor, target = self.transform(crop, make_sample(self.paths[index], [], [], image_id=item,
                                                          size=crop.size))
        return tensor, {"index": item, "scale": target["scale"], "orig_size": target["orig_size"]}

    def merge(self, detections: list[dict], *, iou: float = 0.5, max_det: int = 100) -> list[dict]:
        """Per-tile detections (tile pixels, in item order) -> one merged set per image, original pixels."""
        per_image: list[list[dict]] = [[] for _ in self.paths]
        for (index, (x0, y0, _, _)), det in zip(self.items, detections):
            shift = torch.tensor([x0, y0, x0, y0], dtype=det["boxes"].dtype)
            per_image[index].append({**det, "boxes": det["boxes"] + shift})
        out = []
        for index, found in enumerate(per_image):
            merged = merge_tiles(
                torch.cat([d["boxes"] for d in found]), torch.cat([d["scores"] for d in found]),
                torch.cat([d["labels"] for d in found]), iou=iou, max_det=max_det,
            )
            out.append({"index": index, **merged})
        return out
