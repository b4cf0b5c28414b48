"""``MaskDataModule``: semantic-mask splits + joint transforms -> Lightning dataloaders.

Batches are ``(images, masks)``: ``(N, 3, S, S)`` float 0..1 and ``(N, S, S)`` int64 class indices
(``ignore_index`` where there is nothing to learn: padding, VOC borders, COCO crowds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from b4transfer.data.images import load_rgb
from b4transfer.data.loaders import SplitsDataModule, fill_colour
from b4transfer.tasks.segmentation.data.masks import MaskSample, MaskSplits, read_mask
from b4transfer.tasks.segmentation.data.transforms import MaskTransform, content_size


class MaskDataset(Dataset):
    """``dataset[i] -> (image (3, S, S) float 0..1, mask (S, S) int64)``."""

    def __init__(
        self, samples: Sequence[MaskSample], transform: MaskTransform, palette=None, binary: bool = False
    ) -> None:
        self.samples, self.transform, self.palette, self.binary = list(samples), transform, palette, binary
        self.draft_size = (2 * transform.size, 2 * transform.size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = load_rgb(sample.path, draft_size=self.draft_size)
        mask = read_mask(sample.mask, self.palette, size=sample.size, binary=self.binary)
        return self.transform(image, mask)


class MaskPathDataset(Dataset):
    """Unlabelled images for prediction: ``dataset[i] -> (canvas, {"index", "content", "orig"})``, with the
    content's ``(h, w)`` on the canvas and the original ``(H, W)``."""

    def __init__(self, paths: Sequence[str | Path], image_size: int, fill, resize: str = "letterbox") -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = MaskTransform(image_size, fill=fill, ignore_index=0, train=False, resize=resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_rgb(self.paths[index])
        canvas, _ = self.transform(image, None)
        h, w = content_size(image.height, image.width, self.transform.size, self.transform.resize)
        return canvas, {
            "index": index,
            "content": torch.tensor([h, w]),
            "orig": torch.tensor([image.height, image.width]),
        }


class MaskDataModule(SplitsDataModule):
    """Train/val/test dataloaders for semantic masks: a :class:`~b4transfer.data.loaders.SplitsDataModule`.

    Args:
        splits: The dataset, e.g. from ``seg_folder_splits`` or ``voc_seg_splits``.
        image_size: Side of the square canvas (train and eval).
        mean: Normalisation mean of the model (the padding colour).
        augment: ``hflip``, ``scale``, ``color_jitter`` (see
            :func:`~b4transfer.tasks.segmentation.data.transforms.check_mask_augment`).
        resize: ``letterbox`` or ``stretch`` for evaluation.
        **loader: ``batch_size``, ``num_workers``, ``pin_memory``... of
            :class:`~b4transfer.data.loaders.SplitsDataModule`.
    """

    def __init__(
        self,
        splits: MaskSplits,
        *,
        image_size: int,
        mean: Sequence[float],
        augment: Mapping[str, Any] | None = None,
        resize: str = "letterbox",
        **loader: Any,
    ) -> None:
        super().__init__(splits, add_val="add a val folder / list", **loader)
        fill, ignore = fill_colour(mean), splits.ignore_index
        self.train_transform = MaskTransform(
            image_size, fill=fill, ignore_index=ignore, train=True, augment=augment, resize=resize
        )
        self.eval_transform = MaskTransform(
            image_size, fill=fill, ignore_index=ignore, train=False, resize=resize
        )

    def split_dataset(self, samples: list, transform: MaskTransform) -> MaskDataset:
        """Images and their masks, read with the splits' palette (or as binary masks)."""
        return MaskDataset(samples, transform, self.splits.palette, self.splits.binary)
