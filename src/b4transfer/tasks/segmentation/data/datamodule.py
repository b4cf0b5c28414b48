"""``MaskDataModule``: semantic-mask splits + joint transforms -> Lightning dataloaders.

Batches are ``(images, masks)``: ``(N, 3, S, S)`` float 0..1 and ``(N, S, S)`` int64 class indices
(``ignore_index`` where there is nothing to learn: padding, VOC borders, COCO crowds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from b4transfer.data.images import load_rgb
from b4transfer.data.loaders import check_int, fill_colour, lone_last_batch
from b4transfer.errors import UserError
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


class MaskDataModule(L.LightningDataModule):
    """Train/val/test dataloaders for semantic masks.

    Args:
        splits: The dataset, e.g. from ``seg_folder_splits`` or ``voc_seg_splits``.
        image_size: Side of the square canvas (train and eval).
        mean: Normalisation mean of the model (the padding colour).
        batch_size: Images per batch (per device).
        num_workers: Dataloader worker processes; 0 loads in the main process.
        augment: ``hflip``, ``scale``, ``color_jitter`` (see
            :func:`~b4transfer.tasks.segmentation.data.transforms.check_mask_augment`).
        resize: ``letterbox`` or ``stretch`` for evaluation.
        pin_memory: Pin host memory.
    """

    def __init__(
        self,
        splits: MaskSplits,
        *,
        image_size: int,
        mean: Sequence[float],
        batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping[str, Any] | None = None,
        resize: str = "letterbox",
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        check_int(batch_size, "data.batch_size", 1, "set e.g. data.batch_size=8")
        check_int(num_workers, "data.num_workers", 0, "set data.num_workers=0 (main process) or more")
        if not splits.val:
            raise UserError(
                f"The validation split is empty ({len(splits.train)} training images). Fix: add a "
                "val folder / list, or use at least 2 training images so some are held out."
            )
        self.splits, self.batch_size, self.num_workers, self.pin_memory = (
            splits,
            batch_size,
            num_workers,
            pin_memory,
        )
        fill, ignore = fill_colour(mean), splits.ignore_index
        self.train_transform = MaskTransform(
            image_size, fill=fill, ignore_index=ignore, train=True, augment=augment, resize=resize
        )
        self.eval_transform = MaskTransform(
            image_size, fill=fill, ignore_index=ignore, train=False, resize=resize
        )

    @property
    def class_names(self) -> list[str]:
        return self.splits.class_names

    def dataset(self, split: str) -> MaskDataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``) with its transform."""
        transform = self.train_transform if split == "train" else self.eval_transform
        splits = self.splits
        return MaskDataset(getattr(splits, split), transform, splits.palette, splits.binary)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and lone_last_batch(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.splits.test else "val", train=False)
