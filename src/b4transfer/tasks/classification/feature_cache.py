"""Cached-feature linear probe: backbone features computed once, the head trained on them.

A linear probe trains only the head on a frozen backbone. With deterministic training inputs
(``data.augment=false``: resize + centre crop, no random crop, flip or colour jitter) every epoch
feeds the same pixels through the same frozen function, so the backbone pass — nearly all of the
cost — can be done once. :class:`CachedFeatureDataModule` wraps a
:class:`~b4transfer.tasks.classification.data.datamodule.ClassificationDataModule`: the first time a split
is asked for it runs the backbone over it in eval mode (no gradients, under the Trainer's precision, on the
module's device) and keeps the pooled features in memory (``num_features`` floats per image,
7 KB for B4); every epoch then trains and validates the head on ``(features, target)`` batches.
:meth:`ClassificationModule.forward <b4transfer.tasks.classification.module.ClassificationModule.forward>`
takes such
``(N, num_features)`` batches as they are.

The result is the same head as training on images with the backbone frozen in eval mode, same seed
(``tests/test_feature_cache.py``): batch order and dropout draw the same random numbers, because the
extraction runs under ``torch.random.fork_rng`` and leaves the global generator untouched.
Switch it on with ``data.cache_features=true`` (``python run.py data.cache_features=true
data.augment=false``); it freezes the backbone for the whole run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from b4transfer.errors import UserError
from b4transfer.tasks.classification.data.datamodule import ClassificationDataModule
from b4transfer.training.finetuning import schedule_name

log = logging.getLogger(__name__)

__all__ = ["CachedFeatureDataModule", "check_cacheable", "enable_feature_cache", "extract_features"]


def check_cacheable(*, augment: Any, finetune: Mapping[str, Any] | None = None) -> None:
    """Raise unless cached features give the same result as running the frozen backbone each step.

    Args:
        augment: The ``data.augment`` setting; must be ``False`` (random augmentation changes every
            epoch's pixels, so features of one epoch cannot stand for the next).
        finetune: The ``finetune`` config, if the run has one; only a linear probe (the backbone
            frozen for the whole run) can use cached features.
    """
    if augment is not False:
        raise UserError(
            f"data.cache_features=true needs deterministic training images, but data.augment={augment!r} "
            "applies random augmentation that changes every epoch. Fix: add data.augment=false (resize + "
            "centre crop only), or set data.cache_features=false to keep the augmentation."
        )
    # a finetune config ({"_target_": "...LinearProbe"} or {"name": ...}) or a schedule name
    name = schedule_name(finetune) if isinstance(finetune, Mapping) else finetune
    if name not in (None, "linear_probe"):
        raise UserError(
            f"data.cache_features=true needs the backbone frozen for the whole run, but finetune={name!r} "
            "trains it. Fix: use finetune=linear_probe, or set data.cache_features=false."
        )


def _check_frozen(backbone: nn.Module) -> None:
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if trainable:
        raise UserError(
            f"Cached features need a frozen backbone, but {len(trainable)} backbone parameters require "
            f"gradients (e.g. {trainable[0]!r}). Fix: freeze it (backbone.requires_grad_(False), as "
            "data.cache_features=true / finetune=linear_probe do) or do not cache features."
        )


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | str = "cpu",
    autocast=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` in eval mode over ``loader`` and return ``(features, targets)`` on the CPU.

    Args:
        backbone: Pooled-feature backbone, ``(N, 3, H, W) -> (N, C)``.
        loader: Yields ``(images, targets)`` batches in a fixed order.
        device: Where the backbone runs.
        autocast: Context-manager factory wrapping each forward pass (e.g. the Trainer precision's
            ``forward_context``); ``None``: fp32.

    Returns:
        ``features`` (N, C) float32 and ``targets`` (N,) or (N, K), in the loader's order.
    """
    was_training = backbone.training
    backbone.eval()
    feats, targets = [], []
    try:
        with torch.random.fork_rng(devices=[]):  # the loader's seed draw must not shift training RNG
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                if autocast is None:
                    out = backbone(x)
                else:
                    with autocast():
                        out = backbone(x)
                feats.append(out.float().cpu())
                targets.append(y)
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(targets)


class CachedFeatureDataModule(L.LightningDataModule):
    """Serves ``(features, target)`` batches computed once from an image datamodule.

    Args:
        images: The image datamodule; its train transform must be deterministic (``augment=False``).
        backbone: The frozen backbone; ``None``: the attached Trainer's ``lightning_module.backbone``.
        extract_batch_size: Images per backbone pass while extracting; ``None``: ``images.batch_size``.
    """

    def __init__(
        self,
        images: ClassificationDataModule,
        *,
        backbone: nn.Module | None = None,
        extract_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if getattr(images, "augment", False) is not False:
            check_cacheable(augment=images.augment)
        self.images = images
        self.backbone = backbone
        self.extract_batch_size = extract_batch_size or images.batch_size
        self.features: dict[str, TensorDataset] = {}
        self.extract_seconds: dict[str, float] = {}

    @property
    def class_names(self) -> list[str]:
        return self.images.class_names

    def _backbone_and_context(self):
        trainer = self.trainer
        if self.backbone is not None:
            return self.backbone, next(self.backbone.parameters()).device, None
        if trainer is None:
            raise RuntimeError("CachedFeatureDataModule needs a backbone or an attached Trainer.")
        module = trainer.lightning_module
        return module.backbone, module.device, trainer.precision_plugin.forward_context

    def cached(self, split: str) -> TensorDataset:
        """The split's ``TensorDataset(features, targets)``, extracting it on first use."""
        if split not in self.features:
            backbone, device, context = self._backbone_and_context()
            _check_frozen(backbone)
            dataset = self.images.dataset(split)
            loader = DataLoader(
                dataset,
                batch_size=self.extract_batch_size,
                shuffle=False,
                num_workers=self.images.num_workers,
                pin_memory=self.images.pin_memory,
            )
            start = time.perf_counter()
            feats, targets = extract_features(backbone, loader, device=device, autocast=context)
            self.extract_seconds[split] = time.perf_counter() - start
            self.features[split] = TensorDataset(feats, targets)
            log.info(
                "Cached %s features: %d x %d in %.1f s", split, *feats.shape, self.extract_seconds[split]
            )
        return self.features[split]

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        return DataLoader(
            self.cached(split),
            batch_size=self.images.batch_size,
            shuffle=train,
            drop_last=self.images.drop_last and train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.images.splits.test else "val", train=False)


def enable_feature_cache(
    module: nn.Module,
    images: ClassificationDataModule,
    *,
    augment: Any,
    finetune: Mapping[str, Any] | None = None,
) -> CachedFeatureDataModule:
    """Check the settings, freeze ``module.backbone`` and wrap ``images`` in a feature cache.

    Args:
        module: A :class:`~b4transfer.tasks.classification.module.ClassificationModule`.
        images: Its image datamodule, built with ``augment=False``.
        augment: The ``data.augment`` setting (checked to be ``False``).
        finetune: The ``finetune`` config, if any (checked to be a linear probe).

    Returns:
        The datamodule to pass to ``trainer.fit``.
    """
    check_cacheable(augment=augment, finetune=finetune)
    module.backbone.requires_grad_(False)
    return CachedFeatureDataModule(images)
