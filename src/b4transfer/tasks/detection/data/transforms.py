"""Box-aware transforms for detection: ``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes``.

Every image becomes a square ``image_size`` canvas, float 0..1 (the detector normalises it):

* **eval** — letterbox: the longer side is resized to ``image_size`` (aspect ratio kept), then the
  bottom/right are padded with the mean colour. Content keeps its top-left origin, so a box maps
  back to the original image by dividing by the per-axis ``scale`` stored in the target.
* **train** — scale jitter (the letterbox fit times a random factor in ``augment.scale``), a
  random ``image_size`` crop/pad, horizontal flip, colour jitter; boxes cut to nothing by
  the crop are removed (``SanitizeBoundingBoxes``), images left with no boxes stay as negatives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from b4transfer.data.boxes import DetectionSample
from b4transfer.data.loaders import check_flip_scale_jitter
from b4transfer.errors import UserError

# As conf/data/_detection_common.yaml: no scale or colour jitter (measured: docs/studies/detection-recipe.md).
DEFAULT_AUGMENT: dict[str, Any] = {"hflip": 0.5, "scale": (1.0, 1.0), "color_jitter": 0.0}


def check_augment(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``data.augment`` for detection (``hflip``, ``scale``, ``color_jitter``)."""
    return check_flip_scale_jitter(augment, DEFAULT_AUGMENT, kind="detection", scale_example="[0.75,1.25]")


def _labels_and_crowd(inputs):
    """What SanitizeBoundingBoxes filters along with the boxes."""
    target = inputs[1]
    return target["labels"], target["iscrowd"]


class DetectionTransform:
    """``(PIL image, DetectionSample) -> (float image (3, S, S), target dict)``.

    The target holds ``boxes`` (``(N, 4)`` xyxy in the canvas), ``labels``, ``iscrowd``,
    ``image_id``, ``orig_size`` (height, width of the original image) and ``scale``
    (``(4,)``: canvas pixels per original pixel for x1, y1, x2, y2; exact for eval).

    Args:
        image_size: Side ``S`` of the square canvas.
        fill: Padding colour, RGB 0..255 (the normalisation mean, so padding is zero after it).
        train: Random augmentation (else the deterministic letterbox).
        augment: ``hflip``, ``scale``, ``color_jitter``, see :func:`check_augment`.
    """

    def __init__(
        self, image_size: int, *, fill: tuple[int, int, int], train: bool, augment: Mapping | None = None
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise UserError(f"data.image_size must be an integer >= 32 for detection, got {image_size!r}.")
        self.size = image_size
        self.fill = tuple(int(v) for v in fill)
        self.train = train
        self.augment = check_augment(augment)
        self.random = None
        if train:
            aug, size, c = self.augment, image_size, self.augment["color_jitter"]
            steps = [
                v2.ScaleJitter((size, size), scale_range=aug["scale"], antialias=True),
                v2.RandomCrop(size, pad_if_needed=True, fill=self.fill),
                v2.RandomHorizontalFlip(aug["hflip"]),
                v2.ColorJitter(brightness=c, contrast=c, saturation=c)
                if c > 0
                else v2.Identity(),  # on the canvas: cheap
                v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_crowd),
            ]
            self.random = v2.Compose(steps)

    def __call__(self, image: Image.Image, sample: DetectionSample) -> tuple[torch.Tensor, dict]:
        width, height = sample.size
        boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4).copy()
        if image.size != (width, height):  # e.g. a JPEG decoded at a reduced draft scale
            boxes *= np.array([image.width / width, image.height / height] * 2, np.float32)
        canvas = (image.height, image.width)
        img = F.to_image(image)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=canvas),
            "labels": torch.as_tensor(sample.labels, dtype=torch.int64),
            "iscrowd": torch.as_tensor(sample.iscrowd, dtype=torch.int64),
        }
        if self.train:
            img, target = self.random(img, target)
            scale = torch.full((4,), float("nan"))  # not an affine map back any more
        else:
            img, target, scale = self._letterbox(img, target, sample.size)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4)
        target["image_id"] = sample.image_id
        target["orig_size"] = torch.tensor([height, width])
        target["scale"] = scale
        return F.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor), target

    def _letterbox(self, img, target, orig_size: tuple[int, int]):
        h, w = img.shape[-2:]
        ratio = self.size / max(h, w)
        new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
        img = F.resize(img, [new_h, new_w], antialias=True)
        boxes = F.resize(target["boxes"], [new_h, new_w])
        padding = [0, 0, self.size - new_w, self.size - new_h]  # left, top, right, bottom
        img = F.pad(img, padding, fill=list(self.fill))
        target["boxes"] = F.pad(boxes, padding)
        sx, sy = new_w / orig_size[0], new_h / orig_size[1]
        return img, target, torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
