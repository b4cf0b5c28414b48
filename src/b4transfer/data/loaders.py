"""Checks and helpers every task's data module shares: integer settings, the lone last batch, the
letterbox fill colour, the dense tasks' augment settings and their data module base."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from b4transfer.data.splits import SPLIT_NAMES
from b4transfer.errors import UserError


def check_int(value: Any, key: str, low: int, fix: str) -> None:
    """Refuse ``value`` for ``key`` unless it is an integer >= ``low`` (``fix`` says what to set)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}. Fix: {fix}.")


def lone_last_batch(num_samples: int, batch_size: int) -> bool:
    """Whether an epoch would end with a batch of one image: training drops it (BatchNorm in train mode
    cannot normalise a single value per channel, e.g. a 1x1 map of one image), one image per epoch."""
    return batch_size > 1 and num_samples > batch_size and num_samples % batch_size == 1


def fill_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """The normalisation mean as 0..255 RGB: padding that normalises to zero."""
    return tuple(int(round(255 * float(m))) for m in mean)


def check_flip_scale_jitter(
    augment: Mapping[str, Any] | None, defaults: Mapping[str, Any], *, kind: str, scale_example: str
) -> dict[str, Any]:
    """``data.augment`` of the dense tasks (``hflip``, ``scale``, ``color_jitter``) over ``defaults``,
    checked: each wrong value named with its fix (``kind`` names the data in the unknown-key message,
    ``scale_example`` is the scale range the fix suggests)."""
    aug = dict(defaults if augment is None else augment)
    unknown = sorted(set(aug) - set(defaults))
    if unknown:
        raise UserError(f"data.augment has unknown key(s) {unknown} for {kind}. Fix: use {sorted(defaults)}.")
    aug = {**defaults, **aug}
    if not isinstance(aug["hflip"], numbers.Real) or not 0 <= aug["hflip"] <= 1:
        raise UserError(f"data.augment.hflip must be a probability in [0, 1], got {aug['hflip']!r}.")
    scale = aug["scale"]
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise UserError(
            f"data.augment.scale must be [low, high] with 0 < low <= high, got {scale!r}. "
            f"Fix: e.g. data.augment.scale={scale_example}, or [1.0,1.0] for no scale jitter."
        )
    if not isinstance(aug["color_jitter"], numbers.Real) or aug["color_jitter"] < 0:
        raise UserError(f"data.augment.color_jitter must be >= 0, got {aug['color_jitter']!r}.")
    aug["scale"] = (float(scale[0]), float(scale[1]))
    return aug


class SplitsDataModule(L.LightningDataModule):
    """Train/val/test dataloaders over a task's splits: checked batch settings, one dataset a split (the
    task's :meth:`split_dataset`), shuffling and a dropped lone last batch in training only, and the
    validation split for testing when there is no test split. Subclasses set ``train_transform`` and
    ``eval_transform``.

    Args:
        splits: The task's splits (``class_names``, ``train``, ``val``, ``test``).
        add_val: How the user adds a validation split, for the error when it is empty.
        collate_fn: How a list of samples makes a batch; ``None``: stacked tensors.
        batch_size: Images per batch (per device).
        num_workers: Dataloader worker processes; 0 loads in the main process.
        pin_memory: Pin host memory.
        persistent_workers: Keep workers between epochs; ``None``: when ``num_workers > 0``.
    """

    train_transform: Callable
    eval_transform: Callable

    def __init__(
        self,
        splits: Any,
        *,
        add_val: str,
        collate_fn: Callable | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        check_int(batch_size, "data.batch_size", 1, "set e.g. data.batch_size=8")
        check_int(num_workers, "data.num_workers", 0, "set data.num_workers=0 (main process) or more")
        if not splits.val:
            raise UserError(
                f"The validation split is empty ({len(splits.train)} training images). Fix: {add_val}, "
                "or use at least 2 training images so some are held out."
            )
        self.splits = splits
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self.collate_fn = collate_fn

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return self.splits.class_names

    def split_dataset(self, samples: list, transform: Callable) -> Dataset:
        """The task's dataset of ``samples`` with ``transform``."""
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``) with its transform."""
        if split not in SPLIT_NAMES:
            raise UserError(f"Unknown split {split!r}. Fix: use one of {list(SPLIT_NAMES)}.")
        transform = self.train_transform if split == "train" else self.eval_transform
        return self.split_dataset(getattr(self.splits, split), transform)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and lone_last_batch(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches; the validation split when there is no test split."""
        return self._loader("test" if self.splits.test else "val", train=False)
