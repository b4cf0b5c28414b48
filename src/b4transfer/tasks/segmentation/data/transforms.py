"""Joint image + mask transforms: ``torchvision.transforms.v2`` with ``tv_tensors.Mask``.

Every image becomes a square ``image_size`` canvas, float 0..1 (the model normalises it), and its mask an
``(S, S)`` int64 map of class indices. Masks are only ever resized nearest-neighbour (v2 does so for a
``Mask``), and every pixel added by padding is ``ignore_index`` in the mask (the mean colour in the image):

* **eval** — ``resize=letterbox`` (default): the longer side to ``S``, aspect ratio kept, bottom/right
  padded; ``resize=stretch``: both sides to ``S``. A prediction maps back by cropping the content
  (letterbox) and resizing to the original size.
* **train** — scale jitter (the letterbox fit times a random factor in ``augment.scale``), a random ``S``
  crop/pad, horizontal flip, colour jitter (the image only).
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

from b4transfer.data.loaders import check_flip_scale_jitter
from b4transfer.errors import UserError

DEFAULT_AUGMENT: dict[str, Any] = {"hflip": 0.5, "scale": (0.5, 2.0), "color_jitter": 0.2}
RESIZE_MODES = ("letterbox", "stretch")


def check_mask_augment(augment: Mapping[str, Any] | None | bool) -> dict[str, Any]:
    """Validate ``data.augment`` (``hflip``, ``scale``, ``color_jitter``); ``false``: no augmentation."""
    if augment is False:
        return {"hflip": 0.0, "scale": (1.0, 1.0), "color_jitter": 0.0}
    return check_flip_scale_jitter(augment, DEFAULT_AUGMENT, kind="semantic masks", scale_example="[0.5,2.0]")


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise UserError(f"data.resize={resize!r} is not supported; use one of {', '.join(RESIZE_MODES)}.")
    return resize


def content_size(height: int, width: int, size: int, resize: str) -> tuple[int, int]:
    """``(h, w)`` of an image's content on the ``size`` canvas (letterbox: longer side = ``size``)."""
    if resize == "stretch":
        return size, size
    ratio = size / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


class MaskTransform:
    """``(PIL image, (H, W) mask array or None) -> (float image (3, S, S), int64 mask (S, S))``.

    Args:
        image_size: Side ``S`` of the square canvas.
        fill: Padding colour of the image, RGB 0..255 (the normalisation mean: zero after it).
        ignore_index: Mask value of padding.
        train: Random augmentation (else the deterministic resize).
        augment: ``hflip``, ``scale``, ``color_jitter``, see :func:`check_mask_augment`.
        resize: ``letterbox`` or ``stretch`` (evaluation; training always letterboxes before its jitter).
    """

    def __init__(
        self,
        image_size: int,
        *,
        fill,
        ignore_index: int,
        train: bool,
        augment=None,
        resize: str = "letterbox",
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise UserError(
                f"data.image_size must be an integer >= 32 for semantic masks, got {image_size!r}."
            )
        self.size, self.train, self.resize = image_size, train, check_resize(resize)
        self.fill = {tv_tensors.Image: [int(v) for v in fill], tv_tensors.Mask: int(ignore_index)}
        self.ignore_index = int(ignore_index)
        self.augment = check_mask_augment(augment)
        self.random = None
        if train:
            aug, c = self.augment, self.augment["color_jitter"]
            self.random = v2.Compose(
                [
                    v2.ScaleJitter((image_size, image_size), scale_range=aug["scale"], antialias=True),
                    v2.RandomCrop(image_size, pad_if_needed=True, fill=self.fill),
                    v2.RandomHorizontalFlip(aug["hflip"]),
                    v2.ColorJitter(brightness=c, contrast=c, saturation=c) if c > 0 else v2.Identity(),
                ]
            )

    def __call__(self, image: Image.Image, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(F.pil_to_tensor(image))
        if mask is None:  # prediction: an all-ignore mask keeps one code path
            mask = np.full((image.height, image.width), self.ignore_index, np.int64)
        elif mask.shape != (image.height, image.width):  # a JPEG decoded at a reduced draft scale
            mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(image.size, Image.NEAREST))
        target = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))
        if self.train:
            img, target = self.random(img, target)
        else:
            img, target = self._resize(img, target)
        return F.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor), target.as_subclass(
            torch.Tensor
        )

    def _resize(self, img, mask):
        h, w = content_size(*img.shape[-2:], self.size, self.resize)
        img, mask = F.resize(img, [h, w], antialias=True), F.resize(mask, [h, w])
        padding = [0, 0, self.size - w, self.size - h]  # left, top, right, bottom
        return F.pad(img, padding, fill=self.fill[tv_tensors.Image]), F.pad(
            mask, padding, fill=self.ignore_index
        )
