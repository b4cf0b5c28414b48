"""``DetectionDataModule``: detection splits + box-aware transforms -> Lightning dataloaders.

Batches are ``(images, targets)``: a list of ``(3, S, S)`` float tensors and a list of target
dicts (see :class:`~b4transfer.tasks.detection.data.transforms.DetectionTransform`), the form
torchvision detectors take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from b4transfer.data.boxes import DetectionSample, make_sample
from b4transfer.data.images import load_rgb, upright_size
from b4transfer.data.loaders import check_int, fill_colour, lone_last_batch
from b4transfer.errors import UserError
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


class DetectionDataModule(L.LightningDataModule):
    """Train/val/test dataloaders for object detection.

    Args:
        splits: The dataset, e.g. from ``coco_splits`` or ``yolo_splits``.
        image_size: Side of the square letterbox canvas.
        mean: Normalisation mean of the model (the padding colour).
        batch_size: Images per batch (per device).
        num_workers: Dataloader worker processes; 0 loads in the main process.
        augment: ``hflip``, ``scale``, ``color_jitter``, see :func:`check_augment`.
        pin_memory: Pin host memory.
        persistent_workers: Keep workers between epochs; ``None``: when ``num_workers > 0``.
    """

    def __init__(
        self,
        splits: DetectionSplits,
        *,
        image_size: int,
        mean: Sequence[float],
        batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        check_int(batch_size, "data.batch_size", 1, "set e.g. data.batch_size=8")
        check_int(num_workers, "data.num_workers", 0, "set data.num_workers=0 (main process) or more")
        if not splits.val:
            raise UserError(
                f"The validation split is empty ({len(splits.train)} training images). Fix: add a val "
                "annotation file / images/val folder, or use at least 2 training images so some are held out."
            )
        self.splits = splits
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        fill = fill_colour(mean)
        augment = check_augment(augment)
        self.train_transform = DetectionTransform(image_size, fill=fill, train=True, augment=augment)
        self.eval_transform = DetectionTransform(image_size, fill=fill, train=False)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return self.splits.class_names

    def dataset(self, split: str) -> DetectionDataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``) with its transform."""
        if split not in ("train", "val", "test"):
            raise UserError(f"Unknown split {split!r}. Fix: use one of ['train', 'val', 'test'].")
        transform = self.train_transform if split == "train" else self.eval_transform
        return DetectionDataset(getattr(self.splits, split), transform)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and lone_last_batch(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order, letterboxed."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches; the validation split when there is no test split."""
        return self._loader("test" if self.splits.test else "val", train=False)
