"""Test-time augmentation (``tta=``): the views every task shares, and the maps between image and view.

``tta=hflip`` runs each image as is and mirrored; ``tta=hflip_scales`` adds both at 0.83x and 1.17x the
evaluation size (6 views). What a task does with the views is the task's (its module's ``tta_forward``,
which :meth:`~b4transfer.tasks.base.TaskModule.infer` runs for every task's evaluation while ``module.tta``
is set): classification averages probabilities (:func:`average`), a per-pixel task averages logits mapped back
to the input size (:func:`average_dense`), detection maps each view's boxes back and merges them
(``b4transfer.tasks.detection.tta``). The modes set ``module.tta`` to the views for ``mode=validate``,
``test`` and ``predict``; ``mode=validate|test`` report the metrics with and without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

__all__ = ["MODES", "NAMES", "View", "apply", "average", "average_dense", "monitor_report", "undo_dense",
           "view_side", "views"]

MODES = ("validate", "test", "predict")  # the modes tta= applies to
SCALES = (1.0, 0.83, 1.17)  # tta=hflip_scales: input sides relative to the evaluation size


@dataclass(frozen=True)
class View:
    """One augmented view: mirrored left-right or not, resized by ``scale``."""

    flip: bool = False
    scale: float = 1.0

    def __str__(self) -> str:
        return ("hflip" if self.flip else "identity") + ("" if self.scale == 1.0 else f"@{self.scale:g}")


NAMES: dict[str, tuple[View, ...]] = {
    "hflip": (View(), View(flip=True)),
    "hflip_scales": tuple(View(flip, scale) for scale in SCALES for flip in (False, True)),
}


def views(name: str | None) -> tuple[View, ...] | None:
    """The views of ``tta=name`` (``None``: no TTA). The task checked the name (``Task.check_config``)."""
    return None if name in (None, "", "null") else NAMES[str(name)]


def view_side(side: int, view: View) -> int:
    """The side of a view of an image side ``side``."""
    return max(8, round(side * view.scale))


def apply(view: View, images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images -> the view (resized by ``view.scale``, then mirrored)."""
    if view.scale != 1.0:
        size = [view_side(s, view) for s in images.shape[-2:]]
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return images.flip(-1) if view.flip else images


def undo_dense(view: View, maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Per-pixel outputs ``(N, C, h, w)`` of a view -> the input image's frame ``size`` (H, W)."""
    maps = maps.flip(-1) if view.flip else maps
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=list(size), mode="bilinear", align_corners=False)
    return maps


def average(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, views: Sequence[View] | None
):
    """The mean of ``fn`` (e.g. class probabilities) over the views of ``images`` (no views, TTA off:
    ``fn(images)``)."""
    if not views:
        return fn(images)
    return torch.stack([fn(apply(v, images)) for v in views]).mean(0)


def average_dense(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, views: Sequence[View]):
    """The mean over the views of per-pixel outputs ``fn`` (e.g. per-pixel class logits), each mapped back
    to the input's frame: what a dense task's ``tta_forward`` returns."""
    size = images.shape[-2:]
    return torch.stack([undo_dense(v, fn(apply(v, images)), size) for v in views]).mean(0)


def monitor_report(
    name: str, without: dict[str, float], with_tta: dict[str, float], monitor: str
) -> dict[str, Any]:
    """The ``tta`` entry of an evaluation summary: the views, and every metric without TTA."""
    return {
        "name": name,
        "views": [str(v) for v in NAMES[name]],
        "monitor": monitor,
        "without_tta": without.get(monitor),
        "with_tta": with_tta.get(monitor),
        "metrics_without_tta": without,
    }
