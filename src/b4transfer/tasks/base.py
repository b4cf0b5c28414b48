"""The task contract: what a ``task=`` plug-in provides, and the LightningModule every task extends.

A :class:`Task` says what data it accepts (the type its data sources return), its default monitor
metric, which modes, export formats and fine-tuning schedules it supports, and builds its backbone,
LightningModule and datamodule, writes its predictions and its exports. The modes
(:mod:`b4transfer.modes`) only talk to a task through this contract, so a new task is one package
(and ``conf/task/<name>.yaml``), registered with :func:`b4transfer.tasks.register`.

:class:`TaskModule` is the shared LightningModule: ``self.backbone`` (what freezing schedules, stages
and the backbone optimizer groups act on), ``self.head``, optimizer groups, timm scheduler stepping.
Each task's module subclasses it with its own steps and metrics.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from b4transfer import tta
from b4transfer.backbone.origin import weights_origin
from b4transfer.config import check_seed
from b4transfer.devices import split_lr_scaling
from b4transfer.errors import NotSupportedError
from b4transfer.finetuning import schedule_name
from b4transfer.optim import create_optimizer, create_scheduler, param_groups
from b4transfer.runtime_choice import check_runtime

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_FORMATS", "MODES", "SCHEDULES", "STEPS", "Task", "TaskModule", "metric_name", "step_setting",
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


def metric_name(name: str) -> str:
    """A class name made safe for a metric key (``val/acc_<name>``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


class TaskModule(L.LightningModule):
    """A timm backbone plus a task head: the optimizer groups and scheduler stepping every task shares.

    Subclasses build ``self.backbone``, ``self.head``, ``self.class_names`` and ``self.data_config``
    (``{"train": ..., "eval": ...}`` timm data configs) in ``__init__``, call ``save_hyperparameters``
    with everything needed to rebuild them, and implement the Lightning steps. ``hparams.optim`` and
    ``hparams.scheduler`` configure :meth:`configure_optimizers`.
    """

    task_name: ClassVar[str] = ""
    # Test-time augmentation: the views (b4transfer.tta) set by mode=validate|test|predict with tta=...;
    # a task that supports tta= uses tta_forward in its eval / predict steps while this is set.
    tta: tuple[tta.View, ...] | None = None

    def tta_forward(self, images: Any) -> Any:
        """The task's predictions for ``images`` merged over the views ``self.tta`` (classification:
        averaged probabilities; segmentation: averaged logits, see :func:`b4transfer.tta.average_dense`;
        detection: boxes mapped back and merged). A task listing ``tta_modes`` implements it."""
        raise NotImplementedError

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

    def check_config(self, cfg: DictConfig) -> None:
        """Refuse, before any work, what this task cannot run. Override to add task-specific checks."""
        self.refuse("mode", cfg.mode, self.modes)
        check_seed(cfg.get("seed"))
        schedule = schedule_name(cfg.get("finetune"))
        if schedule in SCHEDULES:  # a schedule class of the user's own is theirs to vouch for
            self.refuse("finetune", schedule, self.schedules)
        tile = (cfg.get("predict") or {}).get("slice")
        if cfg.mode == "predict" and tile is not None and not self.sliced_predict:
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
