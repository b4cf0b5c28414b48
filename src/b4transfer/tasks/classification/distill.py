"""``mode=distill`` for classification: the student is a :class:`ClassificationModule` of any timm model,
trained with :func:`b4transfer.distill.loss.hinton_loss` against the teacher's logits.

The teacher sees the student's own training batch (same crop, flip, mixup), re-normalised with its own
mean / std and resized to its own input size: its logits are computed on the fly under ``no_grad``, or
once before the first epoch when the training images are deterministic (``data.augment=false`` and no
mixup; :class:`TeacherLogitsDataModule`, with the cached-feature machinery's extraction loop). Unlabelled
images (``distill.unlabeled``) are labelled by the teacher beforehand; those above
``distill.pseudo_threshold`` join the training split with the teacher's top class as their label.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from b4transfer.config import num_workers
from b4transfer.data.dataset import PathDataset
from b4transfer.data.splits import DatasetSplits, Sample, drop_unreadable
from b4transfer.data.transforms import build_transforms
from b4transfer.distill.base import Distillation, DistilledStudent
from b4transfer.distill.loss import hinton_loss
from b4transfer.distill.settings import DistillSettings, list_unlabeled
from b4transfer.distill.teacher import Teacher, TeacherSpec
from b4transfer.tasks.classification.feature_cache import extract_features
from b4transfer.tasks.classification.module import ClassificationModule

log = logging.getLogger(__name__)

__all__ = ["ClassificationDistillation", "DistilledClassifier", "TeacherLogitsDataModule", "TeacherView"]


def _stats(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class TeacherView(nn.Module):
    """The teacher's logits, in the data's class order, for a batch prepared for the student."""

    def __init__(self, teacher: Teacher, student_cfg: dict[str, Any], order: list[int] | None) -> None:
        super().__init__()
        self.model = teacher.model.eval().requires_grad_(False)
        self.register_buffer("s_mean", _stats(student_cfg["mean"]), persistent=False)
        self.register_buffer("s_std", _stats(student_cfg["std"]), persistent=False)
        self.register_buffer("t_mean", _stats(teacher.data_config["mean"]), persistent=False)
        self.register_buffer("t_std", _stats(teacher.data_config["std"]), persistent=False)
        self.size = tuple(teacher.data_config["input_size"][-2:])
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self.s_std + self.s_mean - self.t_mean) / self.t_std
        if tuple(x.shape[-2:]) != self.size:
            smaller = self.size[0] < x.shape[-2] or self.size[1] < x.shape[-1]
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=smaller)
        logits = self.model(x)
        return logits[:, self.order] if self.order is not None else logits


class DistilledClassifier(DistilledStudent, ClassificationModule):
    """A :class:`ClassificationModule` trained with the Hinton loss; its checkpoint loads as the plain module.

    Args:
        distill: ``alpha``, ``temperature`` and, for the record, ``teacher`` (its path).
        **kwargs: The :class:`ClassificationModule` arguments.
    """

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, *cached = batch  # (images, targets[, the teacher's cached logits])
        logits = self(x)
        hard = self.head.loss(logits, y)
        teacher = cached[0] if cached else None
        if teacher is None and self.alpha > 0:
            with torch.no_grad():
                teacher = self.teacher.value(x)
        loss, soft = hinton_loss(
            logits,
            teacher,
            hard,
            alpha=self.alpha,
            temperature=self.temperature,
            multi_label=self.head.multi_label,
        )
        n = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/hard_loss", hard, batch_size=n)
        if soft is not None:
            self.log("train/soft_loss", soft, batch_size=n)
        if not self.head.multi_label and y.ndim == 1:
            self.log("train/acc1", (logits.argmax(-1) == y).float().mean(), prog_bar=True, batch_size=n)
        return loss


class _WithLogits(Dataset):
    def __init__(self, dataset: Dataset, logits: torch.Tensor) -> None:
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, y, self.logits[index]


class TeacherLogitsDataModule(L.LightningDataModule):
    """An image datamodule whose training batches carry the teacher's logits, computed once (on the
    module's device, under the Trainer's precision) the first time training asks for them. Only for
    deterministic training images (no augmentation, no mixup)."""

    def __init__(self, images, view: TeacherView) -> None:
        super().__init__()
        self.images, self.view = images, view
        self.logits: torch.Tensor | None = None
        self.extract_seconds = 0.0

    @property
    def class_names(self) -> list[str]:
        return self.images.class_names

    @property
    def sampler(self):
        return self.images.sampler

    def train_dataloader(self) -> DataLoader:
        loader = self.images.train_dataloader()
        if self.logits is None:
            module = self.trainer.lightning_module
            ordered = DataLoader(loader.dataset, batch_size=loader.batch_size, num_workers=loader.num_workers)
            start = time.perf_counter()
            self.logits, _ = extract_features(
                self.view.to(module.device),
                ordered,
                device=module.device,
                autocast=self.trainer.precision_plugin.forward_context,
            )
            self.extract_seconds = time.perf_counter() - start
            log.info(
                "Cached the teacher's logits of %d training images in %.1f s",
                len(self.logits),
                self.extract_seconds,
            )
        return DataLoader(
            _WithLogits(loader.dataset, self.logits),
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            drop_last=loader.drop_last,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            persistent_workers=loader.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self.images.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.images.test_dataloader()


@torch.no_grad()
def teacher_probabilities(
    teacher: Teacher,
    paths: list[Path],
    order,
    *,
    multi_label: bool,
    batch_size: int,
    workers: int,
    device: str,
) -> torch.Tensor:
    """The teacher's calibrated probabilities ``(N, K)`` of ``paths`` (its own evaluation transform)."""
    transform = build_transforms(train_cfg=teacher.data_config, eval_cfg=teacher.data_config)[1]
    loader = DataLoader(PathDataset(paths, transform=transform), batch_size=batch_size, num_workers=workers)
    model = teacher.model.to(device).eval()
    out = []
    for x, _ in loader:
        logits = model(x.to(device)).float().cpu()
        logits = logits[:, order] if order is not None else logits
        out.append(torch.sigmoid(logits) if multi_label else (logits / teacher.temperature).softmax(-1))
    model.cpu()
    return torch.cat(out)


def pseudo_samples(probs: torch.Tensor, paths: list[Path], threshold: float, *, multi_label: bool):
    """The samples the teacher is sure of: top class probability >= ``threshold`` (multi-label: every
    class's yes or no at least that sure), labelled with its decision."""
    if multi_label:
        sure = torch.maximum(probs, 1 - probs).min(-1).values >= threshold
        labels = [tuple(int(i) for i in torch.nonzero(p >= 0.5).flatten()) for p in probs]
    else:
        sure = probs.max(-1).values >= threshold
        labels = probs.argmax(-1).tolist()
    return [
        Sample(path, label, origin=f"distill.unlabeled {path.name} (teacher {float(p.max()):.2f})")
        for path, label, p, keep in zip(paths, labels, probs, sure.tolist())
        if keep
    ]


class ClassificationDistillation(Distillation):
    """What ``mode=distill`` asks the classification task for (see :mod:`b4transfer.modes.distill`)."""

    student_class = DistilledClassifier

    def __init__(self, spec: TeacherSpec, settings: DistillSettings) -> None:
        super().__init__(spec, settings)
        self.pseudo: dict[str, Any] | None = None

    def view(self, teacher: Teacher, student: DistilledClassifier) -> TeacherView:
        return TeacherView(teacher, student.data_config["train"], self.order)

    def training_splits(self, cfg, splits: DatasetSplits) -> DatasetSplits:
        """``splits`` with the unlabelled images the teacher is sure of added to ``train``."""
        if not self.settings.unlabeled:
            return splits
        listed = list_unlabeled(self.settings.unlabeled)
        kept, skipped = drop_unreadable([Sample(p, 0) for p in listed], on_bad_image="skip")
        paths = [s.path for s in kept]
        on_gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto")
        with torch.random.fork_rng(devices=[]):  # the loader's seed draw must not shift training
            probs = teacher_probabilities(
                self.teacher,
                paths,
                self.order,
                multi_label=splits.multi_label,
                batch_size=int(cfg.data.batch_size),
                workers=num_workers(cfg),
                device="cuda" if on_gpu else "cpu",
            )
        threshold = self.settings.pseudo_threshold
        extra = pseudo_samples(probs, paths, threshold, multi_label=splits.multi_label)
        counts = Counter(c for s in extra for c in (s.target if splits.multi_label else (s.target,)))
        self.pseudo = {
            "folder": self.settings.unlabeled,
            "images": len(listed),
            "unreadable": len(skipped),
            "threshold": threshold,
            "used": len(extra),
            "per_class": {name: counts.get(i, 0) for i, name in enumerate(splits.class_names)},
        }
        log.info(
            "Pseudo-labels: %d of %d unlabelled images at teacher probability >= %s",
            len(extra),
            len(listed),
            threshold,
        )
        return dataclasses.replace(splits, train=[*splits.train, *extra])

    def datamodule(self, images, student: DistilledClassifier):
        """``images`` as it is, or with the teacher's logits cached when its training images are
        deterministic."""
        if self.settings.alpha > 0 and images.augment is False and images.mixup is None:
            return TeacherLogitsDataModule(images, student.teacher.value)
        return images

    def report(self, datamodule) -> dict[str, Any]:
        cached = isinstance(datamodule, TeacherLogitsDataModule)
        report = {**super().report(datamodule), "pseudo_labels": self.pseudo}
        if cached:
            report.update(teacher_logits="cached", teacher_cache_s=round(datamodule.extract_seconds, 2))
        return report
