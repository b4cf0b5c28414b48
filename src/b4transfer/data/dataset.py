"""Torch datasets over :class:`~b4transfer.data.splits.Sample` lists and bare paths."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from b4transfer.data.images import load_rgb
from b4transfer.data.splits import Sample
from b4transfer.errors import UserError


def _target_tensor(target: int | tuple[int, ...], num_classes: int, multi_label: bool) -> torch.Tensor:
    labels = tuple(target) if isinstance(target, (tuple, list)) else (int(target),)
    if multi_label:
        multi_hot = torch.zeros(num_classes, dtype=torch.float32)
        multi_hot[list(labels)] = 1.0
        return multi_hot
    return torch.tensor(labels[0], dtype=torch.long)


class ImageDataset(Dataset):
    """Labelled images: ``dataset[i] -> (image_tensor, target)``.

    The target is a ``torch.long`` scalar class index, or for multi-label data a float
    multi-hot vector of length ``num_classes``.

    Args:
        samples: The images and their targets.
        num_classes: Number of classes; every target must be below it.
        multi_label: Return multi-hot float targets.
        transform: PIL image -> tensor; ``None``: ``to_tensor`` (0..1 floats).
        draft_size: ``(width, height)`` for reduced-scale JPEG decoding, see
            :func:`b4transfer.data.images.load_rgb`.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        num_classes: int,
        multi_label: bool = False,
        transform: Callable | None = None,
        draft_size: tuple[int, int] | None = None,
    ):
        self.samples = list(samples)
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.transform = transform
        self.draft_size = draft_size
        for sample in self.samples:
            labels = sample.target if isinstance(sample.target, (tuple, list)) else (sample.target,)
            bad = [label for label in labels if not 0 <= int(label) < num_classes]
            if bad:
                raise UserError(
                    f"{sample.path}: target {sample.target!r} has class index(es) {bad} outside "
                    f"0..{num_classes - 1} (num_classes={num_classes}). Fix: make num_classes match "
                    "the dataset's class names."
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = load_rgb(sample.path, draft_size=self.draft_size)
        tensor = self.transform(image) if self.transform is not None else to_tensor(image)
        return tensor, _target_tensor(sample.target, self.num_classes, self.multi_label)


class PathDataset(Dataset):
    """Unlabelled images for prediction: ``dataset[i] -> (image_tensor, i)``.

    Args:
        paths: Image files.
        transform: PIL image -> tensor; ``None``: ``to_tensor``.
        draft_size: ``(width, height)`` for reduced-scale JPEG decoding.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable | None = None,
        draft_size: tuple[int, int] | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_rgb(self.paths[index], draft_size=self.draft_size)
        tensor = self.transform(image) if self.transform is not None else to_tensor(image)
        return tensor, index
