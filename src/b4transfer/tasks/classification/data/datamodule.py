"""``ClassificationDataModule``: dataset splits + timm transforms -> Lightning dataloaders."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from b4transfer.data.dataset import ImageDataset
from b4transfer.data.loaders import check_int, lone_last_batch
from b4transfer.data.splits import SPLIT_NAMES, DatasetSplits, class_counts
from b4transfer.data.transforms import DRAFT_FACTOR, build_transforms, draft_size_for
from b4transfer.errors import UserError
from b4transfer.tasks.classification.data.mixup import build_mixup
from b4transfer.tasks.classification.data.sampling import SAMPLERS, balanced_sampler

log = logging.getLogger(__name__)


class ClassificationDataModule(L.LightningDataModule):
    """Train/val/test dataloaders for image classification (single- or multi-label).

    Args:
        splits: The dataset, e.g. from ``scan_folder`` or ``read_csv``.
        train_cfg: timm data config for training (input size, mean/std, interpolation).
        eval_cfg: timm data config for validation/test (size, crop_pct, crop_mode).
        batch_size: Images per batch (per device).
        num_workers: Dataloader worker processes; 0 loads in the main process.
        augment: timm training transform kwargs, see ``build_transforms``.
        pin_memory: Pin host memory (faster host-to-GPU copies).
        persistent_workers: Keep workers between epochs; ``None``: when ``num_workers > 0``.
        drop_last: Drop the last incomplete training batch.
        draft_factor: JPEGs decode at a reduced scale keeping >= this x the split's input side
            (see ``draft_size_for``); ``None``: full-size decoding.
        mixup: ``data.mixup`` options (timm Mixup/CutMix on training batches, soft targets);
            ``None`` or both alphas 0: off.
        sampler: ``None`` (shuffled) or ``"balanced"`` (each class drawn equally often, see
            :mod:`b4transfer.tasks.classification.data.sampling`; single-label data only).
        seed: Seed of the balanced sampler's draws.
    """

    def __init__(
        self,
        splits: DatasetSplits,
        *,
        train_cfg: Mapping[str, Any],
        eval_cfg: Mapping[str, Any],
        batch_size: int = 32,
        num_workers: int = 0,
        augment: Mapping[str, Any] | bool | None = None,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        drop_last: bool = False,
        draft_factor: float | None = DRAFT_FACTOR,
        mixup: Mapping[str, Any] | None = None,
        sampler: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if sampler is not None and sampler not in SAMPLERS:
            raise UserError(f"data.sampler={sampler} is not a sampler; use {', '.join(SAMPLERS)} or null.")
        if sampler and splits.multi_label:
            raise UserError(
                f"data.sampler={sampler} needs single-label data (one class per image); with multi-label "
                "data use loss.class_weights=auto or loss.name=focal instead."
            )
        check_int(batch_size, "data.batch_size", 1, "set e.g. data.batch_size=32")
        check_int(num_workers, "data.num_workers", 0, "set data.num_workers=0 (main process) or more")
        if not splits.val:
            raise UserError(
                f"The validation split is empty ({len(splits.train)} training images, "
                f"{splits.num_classes} classes). Fix: add a val/ folder or val rows, or raise "
                "data.val_fraction so each class with 2+ images sends some to validation."
            )
        if drop_last and len(splits.train) < batch_size:
            raise UserError(
                f"data.batch_size={batch_size} with data.drop_last=true but only {len(splits.train)} "
                "training images: no batch would ever be trained. Fix: lower data.batch_size or set "
                "data.drop_last=false."
            )
        self.splits = splits
        self.sampler, self.seed = sampler, seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self.drop_last = drop_last
        self.train_transform, self.eval_transform = build_transforms(
            train_cfg=train_cfg, eval_cfg=eval_cfg, augment=augment
        )
        self.augment = augment
        # per split: training decodes for the train size, evaluation for the (larger) eval size
        self.draft_sizes = {
            "train": draft_size_for(train_cfg, draft_factor),
            "eval": draft_size_for(eval_cfg, draft_factor),
        }
        self.mixup = build_mixup(mixup, num_classes=splits.num_classes, multi_label=splits.multi_label)

    @property
    def class_names(self) -> list[str]:
        """Class names in index order."""
        return self.splits.class_names

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.splits.num_classes

    @property
    def multi_label(self) -> bool:
        """Whether targets are multi-hot vectors."""
        return self.splits.multi_label

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLIT_NAMES:
            raise UserError(f"Unknown split {split!r}. Fix: use one of {list(SPLIT_NAMES)}.")
        return class_counts(getattr(self.splits, split), self.num_classes)

    def dataset(self, split: str) -> ImageDataset:
        """The ``ImageDataset`` of a split, with the train or eval transform."""
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageDataset(
            getattr(self.splits, split),
            num_classes=self.num_classes,
            multi_label=self.multi_label,
            transform=transform,
            draft_size=self.draft_sizes["train" if split == "train" else "eval"],
        )

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        sampler = self._train_sampler() if train and self.sampler else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and (self.drop_last or lone_last_batch(len(dataset), self.batch_size)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _train_sampler(self):
        """The ``data.sampler`` of the training split, this rank's share of it under DDP."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        labels = [sample.target for sample in self.splits.train]
        return balanced_sampler(labels, seed=self.seed, world_size=world, rank=rank)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Mixup/CutMix training batches on their device (validation and test batches stay as they are)."""
        if self.mixup is not None and self.trainer is not None and self.trainer.training:
            batch = self.mixup(*batch)
        return batch

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches with augmentation."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order, with the eval transform."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches; the validation split when there is no test split."""
        if not self.splits.test:
            log.info("No test split: testing on the validation split (%d images).", len(self.splits.val))
            return self._loader("val", train=False)
        return self._loader("test", train=False)
