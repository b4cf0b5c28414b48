"""The shared LightningModule every task's module extends (:class:`TaskModule`): the backbone / head
optimizer groups and timm scheduler stepping, the validation and test steps, the epoch-end metric hooks,
and the test-time augmentation decision. :mod:`b4transfer.tasks.base` re-exports it beside the task
contract."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
import torch

from b4transfer.backbone.origin import weights_origin
from b4transfer.runtime import tta
from b4transfer.training.devices import split_lr_scaling
from b4transfer.training.optim import create_optimizer, create_scheduler, param_groups

log = logging.getLogger(__name__)

__all__ = ["TaskModule"]


class TaskModule(L.LightningModule):
    """A timm backbone plus a task head: what every task's LightningModule shares.

    What a task's module writes (a subclass):

    - ``__init__``: ``save_hyperparameters`` with everything needed to rebuild it (a checkpoint holds no
      config), :meth:`remember_task`, then ``self.backbone`` (:func:`build_backbone`), ``self.head``,
      ``self.class_names``, ``self.data_config`` (``{"train": ..., "eval": ...}`` timm data configs) and,
      if it has metrics, :meth:`init_metrics`.
    - ``forward(inputs)``: its outputs for a batch's inputs, as the validation step reads them
      (e.g. logits, or boxes).
    - :meth:`tta_forward`, if its task lists ``tta_modes``: the same kind of outputs, merged over the
      views ``self.tta``.
    - :meth:`eval_losses`, :meth:`update_metrics` and :meth:`log_metrics`: its loss, metric update and
      metric logging; ``training_step`` and ``predict_step`` (which calls :meth:`infer`, or, for
      classification's calibrated probabilities, averages over the same views).

    What this class does with them, once for every task: ``validation_step`` / ``test_step``
    (:meth:`eval_step`: the outputs of :meth:`infer`, losses logged as ``val/<name>``, metrics
    updated), the epoch-end hooks (metrics computed, logged and reset), and whether TTA applies
    (:meth:`infer`: ``tta_forward`` while ``self.tta`` is set, else ``forward``), so a task cannot
    evaluate without the views it was asked for.

    What a head must provide: it is an ``nn.Module`` holding every trainable parameter that is not the
    backbone's (the optimizer's ``head`` groups, trained at ``optim.lr`` and by every fine-tuning
    schedule from the first epoch; :mod:`b4transfer.training.finetuning` only freezes ``self.backbone``), and
    it
    must not own the backbone's parameters a second time. What it computes is the task's own business.
    ``hparams.optim`` and ``hparams.scheduler`` configure :meth:`configure_optimizers`.
    """

    task_name: ClassVar[str] = ""
    # Test-time augmentation: the views (b4transfer.runtime.tta) set by mode=validate|test|predict with
    # tta=...;
    # infer() (the eval steps, predict) runs tta_forward while this is set.
    tta: tuple[tta.View, ...] | None = None

    @property
    def image_size(self) -> int:
        """Side of the evaluation input (dense tasks: the square canvas every image is letterboxed to)."""
        return int(self.data_config["eval"]["input_size"][-1])

    # ------------------------------------------------------------------ what a task supplies
    def tta_forward(self, inputs: Any) -> Any:
        """The task's outputs for ``inputs`` (what ``forward`` gives) merged over the views ``self.tta``
        (e.g. the log of the averaged probabilities; per-pixel logits averaged by
        :func:`b4transfer.runtime.tta.average_dense`; boxes mapped back and merged). A task listing
        ``tta_modes`` implements it."""
        raise NotImplementedError

    def eval_losses(self, outputs: Any, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """The validation / test losses of a batch: ``{"loss": total, <part>: value, ...}``, logged as
        ``val/loss``, ``val/<part>`` (``outputs``: what :meth:`infer` gave for ``inputs``)."""
        raise NotImplementedError

    def update_metrics(self, metrics: Any, outputs: Any, targets: Any) -> None:
        """Add a batch's outputs to the stage's metrics (:meth:`init_metrics`); by default
        ``metrics.update(outputs, targets)``."""
        metrics.update(outputs, targets)

    def log_metrics(self, values: dict[str, Any], stage: str) -> None:
        """Log the epoch's computed metrics of ``stage`` (``val`` or ``test``); by default each scalar as
        ``<stage>/<name>``."""
        for key, value in values.items():
            if torch.as_tensor(value).numel() == 1:
                self.log(f"{stage}/{key}", torch.as_tensor(value).float(), sync_dist=True)

    # ------------------------------------------------------------------ what the base does with them
    def init_metrics(self, build: Callable[[], Any]) -> None:
        """One metric collection per evaluation stage (``self.val_metrics``, ``self.test_metrics``)."""
        self.val_metrics = build()
        self.test_metrics = build()

    def infer(self, inputs: Any) -> Any:
        """The outputs the evaluation and prediction read: merged over the views while ``self.tta`` is
        set (:meth:`tta_forward`), else ``forward``. The one place that decides whether TTA applies."""
        return self.tta_forward(inputs) if self.tta else self(inputs)

    def eval_step(self, batch: Any, stage: str) -> Any:
        """A validation / test batch ``(inputs, targets)``: outputs, losses logged, metrics updated.
        Returns the outputs (Lightning hands them to ``on_validation_batch_end``)."""
        inputs, targets = batch
        outputs = self.infer(inputs)
        n = len(inputs)
        for key, value in self.eval_losses(outputs, inputs, targets).items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "loss", batch_size=n, sync_dist=True)
        metrics = getattr(self, f"{stage}_metrics", None)
        if metrics is not None:
            self.update_metrics(metrics, outputs, targets)
        return outputs

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self.eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        return self.eval_step(batch, "test")

    def epoch_metrics(self, stage: str) -> None:
        """Compute, log (:meth:`log_metrics`) and reset the metrics of ``stage``, if the task has any."""
        metrics = getattr(self, f"{stage}_metrics", None)
        if metrics is None:
            return
        values = metrics.compute()
        metrics.reset()
        self.log_metrics(values, stage)

    def on_validation_epoch_end(self) -> None:
        self.epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.epoch_metrics("test")

    def log_train(self, values: dict[str, Any], *, batch_size: int, prog_bar: tuple[str, ...] = ()) -> None:
        """Log training metrics: each step's value as ``name`` (``metrics.csv``, the live bar), and the
        epoch's batch-size-weighted mean as ``name_epoch`` (once per epoch, averaged over the ranks): what
        the per-epoch line (:class:`~b4transfer.training.callbacks.EpochLines`) shows as ``name``."""
        for name, value in values.items():
            self.log(name, value, prog_bar=name in prog_bar, batch_size=batch_size)
            self.log(
                f"{name}_epoch", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True
            )

    def metric_names(self) -> list[str] | None:
        """The metrics it logs in training (``train/...``) and validation (``val/...``): the names
        ``checkpoint.monitor`` (and early stopping) may watch, checked before training. ``None`` (a task
        that does not list them): not checked, Lightning fails after the first validation instead."""
        return None

    def logged_metric_names(self) -> list[str] | None:
        """:meth:`metric_names` plus the epoch means :meth:`log_train` adds (``train/loss_epoch``, ...)."""
        names = self.metric_names()
        if names is None:
            return None
        return [m for n in names for m in ((n, f"{n}_epoch") if n.startswith("train/") else (n,))]

    def remember_task(self) -> None:
        """Store the task's name in the hyper-parameters (:func:`b4transfer.tasks.load_module` reads it),
        and where the backbone's starting weights came from (``weights_origin``: the exports and the model
        card state it)."""
        self.hparams["task"] = self.task_name
        self.hparams["weights_origin"] = weights_origin(self.hparams.get("model") or {})

    def configure_optimizers(self):
        # lr_scaling/base_batch_size are applied by train() to optim.lr; the rest goes to timm
        default = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
        opt_cfg, _ = split_lr_scaling(self.hparams.get("optim") or default)
        name, lr = opt_cfg.pop("name", "adamw"), opt_cfg.pop("lr")
        layer_decay = opt_cfg.pop("layer_decay", None)
        model = self.hparams.get("model") or {}
        if layer_decay is not None and not (model.get("pretrained") or model.get("weights")):
            # the decay keeps pretrained lower layers near their weights; random ones must learn (the
            # quickstart's from-scratch demo run stays at chance with it: docs/studies/demo-runs.md)
            log.warning(
                "optim.layer_decay=%s is not applied: the backbone starts from random weights "
                "(model.pretrained=false, no model.weights), so every backbone layer trains at lr * "
                "optim.backbone_lr_mult.",
                layer_decay,
            )
            layer_decay = None
        groups = param_groups(
            backbone=self.backbone,
            head=self.head,
            lr=lr,
            weight_decay=opt_cfg.pop("weight_decay", 0.0),
            backbone_lr_mult=opt_cfg.pop("backbone_lr_mult", 1.0),
            layer_decay=layer_decay,
            # a freezing schedule that unfreezes stage by stage needs one group pair per stage
            split_stages=any(getattr(cb, "needs_stage_groups", False) for cb in self.trainer.callbacks),
        )
        optimizer = create_optimizer(groups, name=name, lr=lr, **opt_cfg)
        # Always a timm scheduler (a constant one for scheduler=none): it applies each group's lr_scale.
        sched_cfg = dict(self.hparams.get("scheduler") or {})
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
