"""``DetectionDataModule``: detection splits + box-aware transforms -> Lightning dataloaders.

Batches are ``(images, targets)``: a list of ``(3, S, S)`` float tensors and a list of target
dicts (see :class:`~b4transfer.tasks.detection.data.transforms.DetectionTransform`), the form
torchvision detectors take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from b4transfer.data.boxes import DetectionSample, make_sample
from b4transfer.data.images import load_rgb, upright_size
from b4transfer.data.loaders import SplitsDataModule, fill_colour
from b4transfer.tasks.detection.data.splits import DetectionSplits
from b4transfer.tasks.detection.data.transforms import DetectionTransform, check_augment


def collate_detection(batch):
    """``[(image, target), ...] -> ([images], [targets])``."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class DetectionDataset(Dataset):
    """``dataset[i] -> (image (3, S, S) float 0..1, target dict)``.

    Args:
        samples: Images and their boxes.
        transform: A :class:`DetectionTransform`.
    """

    def __init__(self, samples: Sequence[DetectionSample], transform: DetectionTransform) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.draft_size = (2 * transform.size, 2 * transform.size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        sample = self.samples[index]
        return self.transform(load_rgb(sample.path, draft_size=self.draft_size), sample)


class DetectionPathDataset(Dataset):
    """Unlabelled images for prediction: ``dataset[i] -> (canvas, {"index", "scale", "orig_size"})``."""

    def __init__(self, paths: Sequence[str | Path], image_size: int, fill: tuple[int, int, int]) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = DetectionTransform(image_size, fill=fill, train=False)
        self.draft_size = (2 * image_size, 2 * image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        image = load_rgb(path, draft_size=self.draft_size)  # may be decoded smaller than the file
        no_boxes = make_sample(path, [], [], image_id=index, size=upright_size(path))
        tensor, target = self.transform(image, no_boxes)
        return tensor, {"index": index, "scale": target["scale"], "orig_size": target["orig_size"]}


class DetectionDataModule(SplitsDataModule):
    """Train/val/test dataloaders for object detection: a :class:`~b4transfer.data.loaders.SplitsDataModule`.

    Args:
        splits: The dataset, e.g. from ``coco_splits`` or ``yolo_splits``.
        image_size: Side of the square letterbox canvas.
        mean: Normalisation mean of the model (the padding colour).
        augment: ``hflip``, ``scale``, ``color_jitter``, see :func:`check_augment`.
        **loader: ``batch_size`` (8), ``num_workers`` (0), ``pin_memory`` (false), ``persistent_workers``
            (``None``: when ``num_workers > 0``), see :class:`~b4transfer.data.loaders.SplitsDataModule`.
    """

    def __init__(
        self,
        splits: DetectionSplits,
        *,
        image_size: int,
        mean: Sequence[float],
        augment: Mapping[str, Any] | None = None,
        **loader: Any,
    ) -> None:
        add_val = "add a val annotation file / images/val folder"
        super().__init__(splits, add_val=add_val, collate_fn=collate_detection, **loader)
        fill = fill_colour(mean)
        augment = check_augment(augment)
        self.train_transform = DetectionTransform(image_size, fill=fill, train=True, augment=augment)
        self.eval_transform = DetectionTransform(image_size, fill=fill, train=False)

    def split_dataset(self, samples: list, transform: DetectionTransform) -> DetectionDataset:
        """Letterboxed images and their boxes."""
        return DetectionDataset(samples, transform)
