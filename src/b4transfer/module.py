"""``TransferModule``: a timm backbone plus a swappable head, as one LightningModule.

The module holds ``self.backbone`` (built by :mod:`b4transfer.backbone`) and ``self.head``
(which owns its loss, probabilities and metrics). Everything needed to rebuild it — model
name, class names, head and optimizer settings, data configs — is saved in the checkpoint's
hyper-parameters, so :func:`load_module` restores it from a checkpoint with no config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from b4transfer.backbone import create_backbone, resolve_data_configs
from b4transfer.devices import split_lr_scaling
from b4transfer.heads.classification import ClassificationHead
from b4transfer.module_detection import DetectionSteps, check_task
from b4transfer.optim import create_optimizer, create_scheduler, param_groups

log = logging.getLogger(__name__)


def _sanitize(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def build_backbone(model: dict[str, Any]) -> torch.nn.Module:
    """The classification backbone described by a ``model`` config (pooled features out)."""
    return create_backbone(
        model["name"],
        pretrained=model.get("pretrained", False),
        weights=model.get("weights"),
        drop_path_rate=model.get("drop_path_rate", 0.0),
    )


class TransferModule(DetectionSteps, L.LightningModule):
    """Fine-tunes a pretrained timm backbone with a task head.

    Args:
        class_names: label names, index = class id.
        model: backbone settings: ``name``, ``pretrained``, ``weights``, ``drop_path_rate``, ``drop_rate``
            (the latter is the head's dropout).
        head: head settings: ``label_smoothing``.
        optim: ``name``, ``lr``, ``weight_decay``, ``backbone_lr_mult`` and timm optimizer kwargs.
        scheduler: ``name``, ``warmup_epochs`` and timm scheduler kwargs; ``None`` for a constant LR.
        data: overrides of the backbone's pretrained data config (``image_size``, ``eval_image_size``,
            ``crop_pct``, ...); the resolved ``{"train": ..., "eval": ...}`` is ``self.data_config``.
        multi_label: several labels per image.
        backbone: an already built backbone (from :func:`build_backbone` with the same ``model``);
            lets a run check the weights before it scans the data.
        task: ``classification`` or ``detection`` (a ``features_only`` backbone and a
            :class:`~b4transfer.heads.detection.DetectionHead`; ``head`` holds its settings).
        category_ids: detection: the data source's id of each class, for COCO results JSON.
    """

    def __init__(
        self,
        *,
        class_names: list[str],
        model: dict[str, Any],
        head: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        multi_label: bool = False,
        backbone: torch.nn.Module | None = None,
        task: str = "classification",
        category_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.task = check_task(task)
        if task == "detection":
            self._init_detection(
                class_names=class_names,
                model=model,
                head=head,
                data=data,
                category_ids=category_ids,
                backbone=backbone,
            )
            return
        self.backbone = backbone if backbone is not None else build_backbone(model)
        self.head = ClassificationHead(
            self.backbone.num_features,
            len(class_names),
            drop_rate=model.get("drop_rate", 0.0),
            multi_label=multi_label,
            **(head or {}),
        )
        self.class_names = list(class_names)
        train_cfg, eval_cfg = resolve_data_configs(self.backbone, **(data or {}))
        self.data_config = {"train": train_cfg, "eval": eval_cfg}
        self.val_metrics = self.head.build_metrics()
        self.test_metrics = self.head.build_metrics()
        self.predict_output = "probs"  # or "embedding": pooled pre-logits features

    # ----------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features, (N, 3, H, W) -> (N, num_features)."""
        return self.backbone(x)

    def forward(self, x, targets: list[dict] | None = None):
        """Classification: logits of images ``(N, 3, H, W)``, or of pooled features ``(N, num_features)``
        (the cached-feature linear probe feeds those, see :mod:`b4transfer.feature_cache`).
        Detection: ``x`` is a list of images; in train mode the head returns its loss dict."""
        if self.task == "detection":
            return self.head(x, targets)
        return self.head(x if x.ndim == 2 else self.backbone(x))

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.task == "detection":
            return self._detection_training_step(batch)
        x, y = batch
        logits = self(x)
        loss = self.head.loss(logits, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        if not self.head.multi_label and y.ndim == 1:
            acc = (logits.argmax(-1) == y).float().mean()
            self.log("train/acc1", acc, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch, metrics, stage: str) -> None:
        if self.task == "detection":
            return self._detection_eval_step(batch, metrics, stage)
        x, y = batch
        logits = self(x)
        loss = self.head.loss(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        metrics.update(logits, y.long() if self.head.multi_label else y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def _log_metrics(self, metrics, stage: str) -> None:
        if self.task == "detection":
            return self._log_detection_metrics(metrics, stage)
        values = metrics.compute()
        metrics.reset()
        for key, value in values.items():
            if key == "confusion_matrix":
                if not self.trainer.sanity_checking:
                    self._save_confusion_matrix(value, stage)
            elif key == "acc_per_class":
                for name, v in zip(self.class_names, value):
                    self.log(f"{stage}/acc_{_sanitize(name)}", v, sync_dist=True)
            else:
                self.log(f"{stage}/{key}", value, prog_bar=key == "acc1", sync_dist=True)

    def _save_confusion_matrix(self, matrix: torch.Tensor, stage: str) -> None:
        if not self.trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metric = self.val_metrics["confusion_matrix"]
        fig, ax = metric.plot(val=matrix.cpu(), labels=self.class_names)
        ax.set_title(f"{stage} confusion matrix, epoch {self.current_epoch}")
        out = Path(self.trainer.default_root_dir) / f"confusion_matrix_{stage}.png"
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)

    # -------------------------------------------------------------- prediction
    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        if self.task == "detection":
            return self._detection_predict_step(batch)
        x, index = batch
        features = self.backbone(x).float()
        if self.predict_output == "embedding":
            return {"index": index, "embedding": features}
        with torch.autocast(features.device.type, enabled=False):  # the cheap head in fp32 under bf16
            return {"index": index, "probs": self.head.probabilities(self.head(features)).float()}

    # --------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        # lr_scaling/base_batch_size are applied by train() to optim.lr; the rest goes to timm
        default = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
        opt_cfg, _ = split_lr_scaling(self.hparams.optim or default)
        name, lr = opt_cfg.pop("name", "adamw"), opt_cfg.pop("lr")
        groups = param_groups(
            backbone=self.backbone,
            head=self.head,
            lr=lr,
            weight_decay=opt_cfg.pop("weight_decay", 0.0),
            backbone_lr_mult=opt_cfg.pop("backbone_lr_mult", 1.0),
            layer_decay=opt_cfg.pop("layer_decay", None),
            # a freezing schedule that unfreezes stage by stage needs one group pair per stage
            split_stages=any(getattr(cb, "needs_stage_groups", False) for cb in self.trainer.callbacks),
        )
        optimizer = create_optimizer(groups, name=name, lr=lr, **opt_cfg)
        # Always a timm scheduler (a constant one for scheduler=none): it applies each group's lr_scale.
        sched_cfg = dict(self.hparams.scheduler or {})
        sched_name = sched_cfg.pop("name", None)
        epochs = max(1, self.trainer.max_epochs or 1)
        steps = max(1, self.trainer.estimated_stepping_batches // epochs)
        scheduler = create_scheduler(
            optimizer, name=sched_name, num_epochs=epochs, updates_per_epoch=steps, **sched_cfg
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if hasattr(scheduler, "step_update"):
            # timm schedulers are stepped by update count, not by torch's step().
            scheduler.step_update(num_updates=self.global_step)
        else:  # e.g. the LR finder's own torch scheduler
            scheduler.step()


def load_module(ckpt_path: str | Path, *, map_location: str = "cpu") -> TransferModule:
    """Rebuild a :class:`TransferModule` from a checkpoint, with no network and no config.

    The backbone is built with random init and then filled from the checkpoint's weights.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={str(ckpt_path)!r} does not exist. Pass the path of a .ckpt written by a "
            "training run, e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt."
        )
    try:  # tensors and plain containers only: a checkpoint is never run as arbitrary pickle
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"ckpt_path={str(path)!r} could not be read as a checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Pass a .ckpt written by b4transfer."
        ) from err
    hparams = ckpt.get("hyper_parameters")
    if not hparams or "class_names" not in hparams:
        raise ValueError(
            f"{path} is not a b4transfer checkpoint (no class_names in its hyper-parameters). "
            "Pass a checkpoint written by `python run.py mode=train`."
        )
    model_cfg = {**hparams["model"], "pretrained": False, "weights": None}
    module = TransferModule(**{**hparams, "model": model_cfg})
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return module
