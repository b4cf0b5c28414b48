"""The task contract: what a ``task=`` plug-in provides, and the LightningModule every task extends.

A :class:`Task` says what data it accepts (the type its data sources return), its default monitor
metric, which modes, export formats and fine-tuning schedules it supports, and builds its backbone,
LightningModule and datamodule, writes its predictions and its exports. The modes
(:mod:`b4transfer.modes`) only talk to a task through this contract, so a new task is one package
(and ``conf/task/<name>.yaml``), registered with :func:`b4transfer.tasks.register`.

:class:`TaskModule` is the shared LightningModule. It owns what every task does the same way: the
backbone / head optimizer groups and timm scheduler stepping, the validation and test steps, the
epoch-end metric hooks, and the test-time augmentation decision (:meth:`TaskModule.infer`). A task's
module supplies only what differs: how it builds ``backbone`` and ``head``, its forward pass, its loss,
its metric update and its metric logging (see the class docstring for the list).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from b4transfer import tta
from b4transfer.artifacts import check_opset
from b4transfer.backbone import build_backbone  # the one backbone builder every task's module uses
from b4transfer.backbone.origin import weights_origin
from b4transfer.config import check_seed
from b4transfer.devices import split_lr_scaling
from b4transfer.errors import NotSupportedError
from b4transfer.finetuning import schedule_name
from b4transfer.optim import create_optimizer, create_scheduler, param_groups
from b4transfer.runtime_choice import check_runtime

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_FORMATS", "MODES", "SCHEDULES", "STEPS", "Task", "TaskModule", "build_backbone", "metric_name",
    "onnx_opset", "step_setting",
]

MODES = ("train", "validate", "test", "predict", "embed", "export", "lr_find", "audit", "distill")
SCHEDULES = ("full", "linear_probe", "freeze_unfreeze", "gradual")
EXPORT_FORMATS = ("timm", "onnx", "openvino", "onnx_int8")
# Post-training steps a task may implement, and the setting that asks for each (null: where implemented)
STEPS = {
    "calibrate": ("calibrate", "enabled"),
    "errors": ("errors", "enabled"),
    "parity": ("export", "parity"),
    "card": ("export", "card"),
}


def step_setting(cfg: DictConfig, step: str) -> Any:
    """The ``calibrate.enabled`` / ``export.parity`` value of ``cfg`` (``None``: where implemented)."""
    group, key = STEPS[step]
    return (cfg.get(group) or {}).get(key)


def onnx_opset(cfg: DictConfig) -> int:
    """``export.onnx_opset``, checked: an integer opset the exporters support, else one line naming the
    key and the fix (:meth:`Task.check_config` asks it of every run, before any data is read)."""
    return check_opset((cfg.get("export") or {}).get("onnx_opset"))


def metric_name(name: str) -> str:
    """A class name made safe for a metric key (``val/acc_<name>``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


class TaskModule(L.LightningModule):
    """A timm backbone plus a task head: what every task's LightningModule shares.

    What a task's module writes (a subclass):

    - ``__init__``: ``save_hyperparameters`` with everything needed to rebuild it (a checkpoint holds no
      config), :meth:`remember_task`, then ``self.backbone`` (:func:`build_backbone`), ``self.head``,
      ``self.class_names``, ``self.data_config`` (``{"train": ..., "eval": ...}`` timm data configs) and,
      if it has metrics, :meth:`init_metrics`.
    - ``forward(inputs)``: its outputs for a batch's inputs, as the validation step reads them
      (classification and segmentation: logits; detection: boxes).
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
    schedule from the first epoch; :mod:`b4transfer.finetuning` only freezes ``self.backbone``), and it
    must not own the backbone's parameters a second time. What it computes is the task's own business.
    ``hparams.optim`` and ``hparams.scheduler`` configure :meth:`configure_optimizers`.
    """

    task_name: ClassVar[str] = ""
    # Test-time augmentation: the views (b4transfer.tta) set by mode=validate|test|predict with tta=...;
    # infer() (the eval steps, predict) runs tta_forward while this is set.
    tta: tuple[tta.View, ...] | None = None

    @property
    def image_size(self) -> int:
        """Side of the evaluation input (dense tasks: the square canvas every image is letterboxed to)."""
        return int(self.data_config["eval"]["input_size"][-1])

    # ------------------------------------------------------------------ what a task supplies
    def tta_forward(self, inputs: Any) -> Any:
        """The task's outputs for ``inputs`` (what ``forward`` gives) merged over the views ``self.tta``
        (classification: log of the averaged probabilities; segmentation: averaged logits, see
        :func:`b4transfer.tta.average_dense`; detection: boxes mapped back and merged). A task listing
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
        the per-epoch line (:class:`~b4transfer.callbacks.EpochLines`) shows as ``name``."""
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


class Task:
    """What a ``task=`` plug-in provides. Subclass it, set the class attributes, implement the builders.

    Attributes:
        name: The ``task=`` value.
        splits_type: The type its data sources return (``DatasetSplits``, ``DetectionSplits``, ...).
        data_hint: The ``data=`` choices giving such data, for error messages.
        monitor: Its default ``checkpoint.monitor`` (set by ``conf/task/<name>.yaml`` too).
        module_class: Its :class:`TaskModule` subclass (rebuilt from a checkpoint's hyper-parameters).
        modes: The modes it supports.
        export_formats: The ``export.format`` values it supports.
        schedules: The ``finetune=`` schedules it supports.
        tta_modes: The ``tta=`` values it supports (its module implements ``tta_forward``).
        sliced_predict: Whether its ``mode=predict`` honours ``predict.slice`` (tiled inference).
        explains: Whether its ``mode=predict`` honours ``predict.explain`` (class activation maps).
        why_not: Why it refuses a setting, by ``"key=value"`` (e.g. ``"mode=distill"``), for the message.
        steps: The post-training steps of ``STEPS`` it implements (``calibrate``: :meth:`calibrate`;
            ``errors``: :meth:`analyse_errors`; ``parity``: :meth:`score_export`; ``card``:
            :meth:`model_card`).
        runtime_adapter: How its exports run in place of its module (``predict.runtime``, a
            :class:`~b4transfer.runtime_choice.RuntimeAdapter`); ``None``: prediction runs in PyTorch.
    """

    name: ClassVar[str] = ""
    splits_type: ClassVar[type] = object
    data_hint: ClassVar[str] = ""
    monitor: ClassVar[str] = "val/loss"
    module_class: ClassVar[type[TaskModule]] = TaskModule
    modes: ClassVar[tuple[str, ...]] = ("train", "validate", "test", "predict", "export", "lr_find")
    export_formats: ClassVar[tuple[str, ...]] = ()
    schedules: ClassVar[tuple[str, ...]] = SCHEDULES
    tta_modes: ClassVar[tuple[str, ...]] = ()
    sliced_predict: ClassVar[bool] = False
    explains: ClassVar[bool] = False
    steps: ClassVar[tuple[str, ...]] = ()
    runtime_adapter: ClassVar[Any] = None
    why_not: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ what it supports
    def refuse(self, kind: str, value: Any, supported: tuple[str, ...]) -> None:
        """Raise the one "task X does not support ..." error unless ``value`` is in ``supported``."""
        if value not in supported:
            reason = self.why_not.get(f"{kind}={value}")
            raise NotSupportedError(
                f"task={self.name} does not support {kind}={value}; it supports "
                f"{', '.join(supported) or 'none'}{f' ({reason})' if reason else ''}."
            )

    def refuse_options(self, asked: dict[str, Any], supported: str) -> None:
        """Raise the one "task X does not support key=value; it supports ``supported``" error for the
        first of ``asked`` (options of other tasks, e.g. ``data.sampler``) that is set (not ``None``)."""
        for key, value in asked.items():
            if value is not None:
                shown = str(value).lower() if isinstance(value, bool) else value  # as typed: true
                raise NotSupportedError(
                    f"task={self.name} does not support {key}={shown}; it supports {supported}"
                )

    def check_config(self, cfg: DictConfig) -> None:
        """Refuse, before any work, what this task cannot run. Override to add task-specific checks."""
        self.refuse("mode", cfg.mode, self.modes)
        check_seed(cfg.get("seed"))
        onnx_opset(cfg)
        schedule = schedule_name(cfg.get("finetune"))
        if schedule in SCHEDULES:  # a schedule class of the user's own is theirs to vouch for
            self.refuse("finetune", schedule, self.schedules)
        tile = (cfg.get("predict") or {}).get("slice")
        if tile is not None and not self.sliced_predict:  # in any mode: a misplaced key, not ignored
            raise NotSupportedError(
                f"task={self.name} does not support predict.slice={tile} (sliced inference); it supports "
                "predict.slice=null."
            )
        if cfg.mode == "predict" and (cfg.get("predict") or {}).get("explain") and not self.explains:
            reason = self.why_not.get("predict.explain=true", "no class activation maps for its outputs")
            raise NotSupportedError(
                f"task={self.name} does not support predict.explain=true; it supports predict.explain=false "
                f"({reason})."
            )
        for step, (group, key) in STEPS.items():  # null: where the task implements it; true: required
            if step_setting(cfg, step) is True and step not in self.steps:
                raise NotSupportedError(
                    f"task={self.name} does not support {group}.{key}=true; it supports "
                    f"{group}.{key}=false (its steps: {', '.join(self.steps) or 'none'})."
                )
        check_runtime(cfg, self)  # predict.runtime: an explicit runtime that cannot run is refused
        if cfg.get("tta") not in (None, "", "null"):
            self.refuse("tta", cfg.tta, self.tta_modes)
            if cfg.mode not in tta.MODES:
                raise NotSupportedError(
                    f"tta={cfg.tta} applies to mode={'|'.join(tta.MODES)}, not mode={cfg.mode}; evaluate the "
                    f"trained checkpoint with mode=validate ckpt_path=... tta={cfg.tta}."
                )

    # ------------------------------------------------------------------ building
    def build_backbone(self, cfg: DictConfig) -> nn.Module:
        """The configured timm backbone (before the data scan: weights problems surface first)."""
        raise NotImplementedError

    def build_module(self, cfg: DictConfig, splits: Any, backbone: nn.Module | None = None) -> TaskModule:
        raise NotImplementedError

    def build_datamodule(self, cfg: DictConfig, splits: Any, module: TaskModule) -> L.LightningDataModule:
        raise NotImplementedError

    def load_module(self, hparams: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> TaskModule:
        """Rebuild the module from a checkpoint's hyper-parameters (random init, then its weights)."""
        accepted = inspect.signature(self.module_class.__init__).parameters
        kwargs = {k: v for k, v in hparams.items() if k in accepted}
        kwargs["model"] = {**hparams["model"], "pretrained": False, "weights": None}
        module = self.module_class(**kwargs)
        module.load_state_dict(state_dict)
        # what the training run started from (older checkpoints: from the model settings they kept)
        module.hparams["weights_origin"] = hparams.get("weights_origin") or weights_origin(hparams["model"])
        return module.eval()

    # ------------------------------------------------------------------ outputs
    def summary(self, splits: Any, datamodule: L.LightningDataModule) -> dict[str, Any]:
        """Entries of the training ``summary.json`` beyond the common ones."""
        return {}

    def audit(self, cfg: DictConfig, splits: Any, run_dir: Path, *, full: bool) -> dict[str, Any]:
        """Audit the data (:mod:`b4transfer.audit`) into ``run_dir``; return the summary's counts. ``full``:
        ``mode=audit`` (near-duplicates, label errors); else the quick check before training, which may
        refuse (conflicting labels). A task listing ``audit`` in ``modes`` implements it; the others train
        unaudited."""
        raise NotImplementedError

    def calibrate(
        self, cfg: DictConfig, module: TaskModule, datamodule: L.LightningDataModule, run_dir: Path
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fit the task's calibration on the validation split and set it on ``module`` (its exports and
        predictions then use it). Returns ``(stored, report)``: what the checkpoint's hyper-parameters
        keep (``calibration``; the module takes it back as its ``calibration`` argument) and the summary
        entries. A task listing ``calibrate`` in ``steps`` implements it."""
        raise NotImplementedError

    def analyse_errors(
        self, cfg: DictConfig, module: TaskModule, datamodule: Any, splits: Any, run_dir: Path
    ) -> dict[str, Any]:
        """Error analysis on the validation split (galleries of the worst images, per-class tables or
        charts) into ``run_dir``; the summary entries. A task listing ``errors`` in ``steps``
        implements it."""
        raise NotImplementedError

    def score_export(
        self, fmt: str, module: TaskModule, out_dir: Path, *, cfg: DictConfig, splits: Any, datamodule: Any
    ) -> dict[str, Any]:
        """The validation metric of export ``fmt`` in ``out_dir`` run by that artefact's own runtime and
        preprocessing (``fmt="pytorch"``: ``module`` itself): ``{"metric", "value", "images"}``. A task
        listing ``parity`` in ``steps`` implements it."""
        raise NotImplementedError

    def model_card(self, cfg: DictConfig, module: TaskModule, out_dir: Path, summary: dict) -> dict[str, Any]:
        """Write ``out_dir/README.md``, a model card of the export (``summary``: the run's, for its metrics,
        parity and calibration); return the summary entries. A task listing ``card`` in ``steps``
        implements it."""
        raise NotImplementedError

    def predict(self, cfg: DictConfig, module: TaskModule, paths: list[Path], run_dir: Path) -> dict:
        """Write the predictions for ``paths`` into ``run_dir``; return the summary entries."""
        raise NotImplementedError

    def embed(self, cfg: DictConfig, module: TaskModule | None, paths: list[Path], run_dir: Path) -> dict:
        """``mode=embed``: write per-image features; ``module`` is ``None`` for the bare backbone."""
        raise NotImplementedError

    def distillation(self, teacher: Any, settings: Any) -> Any:
        """``mode=distill``: what the run asks the task for (see :mod:`b4transfer.modes.distill`), an object
        with ``student(cfg, splits, module)`` (the module as a student of ``teacher``, a
        :class:`~b4transfer.distill.teacher.TeacherSpec`; refuses other classes),
        ``training_splits(cfg, splits)`` (plus pseudo-labels), ``datamodule(datamodule, student)`` and
        ``report(datamodule)`` (the summary's ``distillation``). A task listing ``distill`` in ``modes``
        implements it."""
        raise NotImplementedError

    def export(
        self, fmt: str, module: TaskModule, out_dir: Path, *, cfg: DictConfig, checkpoint: str | None,
        samples: Any = None,
    ) -> dict[str, Any]:
        """Write ``module`` in format ``fmt`` into ``out_dir``; return the summary entries. ``samples``: the
        run's data splits when the export follows training (e.g. images to check an export on)."""
        raise NotImplementedError
