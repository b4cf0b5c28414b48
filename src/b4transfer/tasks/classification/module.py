"""``ClassificationModule``: a pooled timm backbone plus a linear head, as one LightningModule.

The module holds ``self.backbone`` (built by :mod:`b4transfer.backbone`) and ``self.head``
(which owns its loss, probabilities and metrics). Everything needed to rebuild it — model
name, class names, head and optimizer settings, data configs — is saved in the checkpoint's
hyper-parameters, so :func:`b4transfer.tasks.load_module` restores it from a checkpoint with no config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from b4transfer.backbone import resolve_data_configs
from b4transfer.data.transforms import normalize_uint8
from b4transfer.runtime import tta
from b4transfer.settings.module import kwargs_of
from b4transfer.tasks.base import TaskModule, build_backbone, metric_name
from b4transfer.tasks.classification.head import ClassificationHead
from b4transfer.tasks.classification.settings import ClassificationSettings

__all__ = ["ClassificationModule", "build_backbone"]


class ClassificationModule(TaskModule):
    """Fine-tunes a pretrained timm backbone with a classification head.

    Args:
        loss: ``name`` (``ce`` or ``focal``), ``gamma``, ``class_weights`` (resolved: one per class, or
            ``None``); see :mod:`b4transfer.tasks.classification.losses`.
        multi_label: several labels per image.
        calibration: fitted on validation after training (see ``calibration.py``):
            ``{"temperature": T}`` (single-label) or ``{"thresholds": [...]}`` (multi-label); ``None``: none.
        **shared: :class:`~b4transfer.tasks.base.TaskModule`'s: ``class_names``, ``model`` (its
            ``drop_rate`` is the head's dropout), ``head`` (``label_smoothing``), ``optim``, ``scheduler``,
            ``data`` (overrides of the backbone's pretrained data config: ``image_size``,
            ``eval_image_size``, ``crop_pct``, ...; the resolved ``{"train": ..., "eval": ...}`` is
            ``self.data_config``) and ``backbone`` (from :func:`build_backbone` with the same ``model``).
    """

    task_name = "classification"
    schema = ClassificationSettings
    data_keys = ("image_size", "eval_image_size", "crop_pct", "eval_crop_pct", "interpolation", "mean", "std")

    def __init__(
        self, *, loss: dict[str, Any] | None = None, multi_label: bool = False,
        calibration: dict[str, Any] | None = None, **shared: Any,
    ) -> None:
        super().__init__(**shared)
        settings = self.settings
        loss_settings = kwargs_of(settings.loss)
        self.head = ClassificationHead(
            self.backbone.num_features,
            len(self.class_names),
            drop_rate=settings.model.drop_rate or 0.0,
            multi_label=multi_label,
            **kwargs_of(settings.head),
            **{k: v for k, v in loss_settings.items() if k in ("gamma", "class_weights")},
            loss=loss_settings.get("name") or "ce",
        )
        train_cfg, eval_cfg = resolve_data_configs(self.backbone, **kwargs_of(settings.data))
        self.data_config = {"train": train_cfg, "eval": eval_cfg}
        self.init_metrics(self.head.build_metrics)
        self.predict_output = "probs"  # or "embedding": pooled pre-logits features
        self.set_calibration(calibration)

    def set_calibration(self, calibration: dict[str, Any] | None) -> None:
        """Apply (and remember in the hyper-parameters) a temperature or per-class thresholds."""
        calibration = dict(calibration or {})
        self.hparams["calibration"] = calibration or None
        self.head.temperature = float(calibration.get("temperature", 1.0))
        self.head.thresholds = calibration.get("thresholds")

    # ----------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features, (N, 3, H, W) -> (N, num_features)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``(N, 3, H, W)``, or of pooled features ``(N, num_features)`` (the
        cached-feature linear probe feeds those, see :mod:`b4transfer.tasks.classification.feature_cache`)."""
        return self.head(x if x.ndim == 2 else self.backbone(x))

    def probabilities(self, x: torch.Tensor, *, calibrated: bool = True) -> torch.Tensor:
        """Class probabilities of images ``x`` (head in fp32), averaged over the views ``self.tta`` when
        set; ``calibrated``: through the fitted temperature, as prediction gives them."""

        def probs(view: torch.Tensor) -> torch.Tensor:
            features = self.backbone(view).float()
            with torch.autocast(features.device.type, enabled=False):
                logits = self.head(features).float()
                if calibrated:
                    return self.head.probabilities(logits)
                return torch.sigmoid(logits) if self.head.multi_label else logits.softmax(-1)

        return tta.average(probs, x, self.tta)

    def tta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits whose probabilities are the average of the views' raw (uncalibrated) probabilities: the
        loss and the metrics read them as they read plain logits without TTA."""
        p = self.probabilities(x, calibrated=False).clamp(1e-7, 1 - 1e-7)
        return torch.logit(p) if self.head.multi_label else p.log()

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.head.loss(logits, y)
        values = {"train/loss": loss}
        if not self.head.multi_label and y.ndim == 1:
            values["train/acc1"] = (logits.argmax(-1) == y).float().mean()
        self.log_train(values, batch_size=x.shape[0], prog_bar=("train/loss", "train/acc1"))
        return loss

    def metric_names(self) -> list[str]:
        names = ["train/loss", *([] if self.head.multi_label else ["train/acc1"]), "val/loss"]
        names += [f"val/{k}" for k in self.val_metrics if k not in ("acc_per_class", "confusion_matrix")]
        return names + [f"val/acc_{metric_name(name)}" for name in self.class_names]  # as _log_metrics

    # -------------------------------------------------------------- evaluation (steps: TaskModule)
    def eval_losses(self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"loss": self.head.loss(outputs, targets)}

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs, targets.long() if self.head.multi_label else targets)

    def log_metrics(self, values: dict[str, Any], stage: str) -> None:
        for key, value in values.items():
            if key == "confusion_matrix":
                if not self.trainer.sanity_checking:
                    self._save_confusion_matrix(value, stage)
            elif key == "acc_per_class":
                for name, v in zip(self.class_names, value):
                    self.log(f"{stage}/acc_{metric_name(name)}", v, sync_dist=True)
            else:
                self.log(f"{stage}/{key}", value, prog_bar=key == "acc1", sync_dist=True)

    def _save_confusion_matrix(self, matrix: torch.Tensor, stage: str) -> None:
        if not self.trainer.is_global_zero or getattr(self, "lr_finding", False):
            return  # the LR range test's validation passes draw no model worth keeping
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
    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``uint8`` images (the prediction loader's, see ``uint8_eval_transform``) normalised where they
        are, e.g. on the GPU after a 4x smaller copy; float images pass through."""
        return normalize_uint8(x, self.data_config["eval"]["mean"], self.data_config["eval"]["std"])

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, index = batch
        x = self.normalize_input(x)
        if self.predict_output == "embedding":
            return {"index": index, "embedding": self.backbone(x).float()}
        return {"index": index, "probs": self.probabilities(x)}  # the cheap head in fp32 under bf16
