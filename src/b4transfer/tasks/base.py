"""The task contract: what a ``task=`` plug-in provides, and the LightningModule every task extends.

A :class:`Task` says what data it accepts (the type its data sources return), its default monitor
metric, which modes, export formats and fine-tuning schedules it supports, and builds its backbone,
LightningModule and datamodule, writes its predictions and its exports. The modes
(:mod:`b4transfer.modes`) only talk to a task through this contract, so a new task is one package
(and ``conf/task/<name>.yaml``), registered with :func:`b4transfer.tasks.register`.

What a new task writes, and where (nothing outside its package but its ``conf/`` YAML and its registry
entry; ``tests/test_architecture.py`` holds every task to it):

- ``tasks/<name>/__init__.py``: the :class:`Task` subclass and ``TASK`` (a built-in is listed in
  ``tasks._BUILTIN``; a plug-in calls :func:`b4transfer.tasks.register`);
- ``tasks/<name>/data/``: its splits type, its readers (the ``data.source._target_`` functions that return
  it), data module, transforms and demo set, built on the shared :mod:`b4transfer.data` (image reading and
  checks, splits, k-fold, box samples, COCO JSON parsing, data-module helpers);
- ``tasks/<name>/module.py`` (a :class:`TaskModule` subclass), ``head.py``, its losses and metrics;
- ``tasks/<name>/settings.py``: the schema of its config (:attr:`Task.schema`: :class:`RunSettings` plus its
  ``data``, ``head`` and ``loss`` dataclasses, types only: the defaults stay in its YAML), checked once
  after composition (:func:`b4transfer.settings.validate`); without one only the shared keys are checked;
- ``tasks/<name>/predict.py`` / ``results.py`` (what predictions it writes), ``export.py`` (its export
  formats), and the post-training steps it implements (:data:`STEPS`);
- ``conf/task/<name>.yaml`` (its own keys) and ``conf/data/<source>.yaml`` per data source, or Hydra
  ``ConfigStore`` nodes (as the toy task of ``tests/test_toy_task.py`` does, all in one file).

:class:`TaskModule` is the shared LightningModule. It owns what every task does the same way: the
backbone / head optimizer groups and timm scheduler stepping, the validation and test steps, the
epoch-end metric hooks, and the test-time augmentation decision (:meth:`TaskModule.infer`). A task's
module supplies only what differs: how it builds ``backbone`` and ``head``, its forward pass, its loss,
its metric update and its metric logging (see the class docstring for the list).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from b4transfer.backbone import build_backbone  # the one backbone builder every task's module uses
from b4transfer.backbone.origin import weights_origin
from b4transfer.config import check_seed, conf_default
from b4transfer.errors import NotSupportedError
from b4transfer.export.artifacts import check_opset
from b4transfer.runtime import tta
from b4transfer.runtime.choice import check_runtime
from b4transfer.settings import PluginSettings, RunSettings
from b4transfer.tasks.task_module import TaskModule
from b4transfer.training.finetuning import schedule_name

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


# predict.* keys only some tasks' mode=predict reads (Task.predict_outputs); the others refuse them when set.
PREDICT_OUTPUT_KEYS = ("draw", "draw_score_thresh", "coco_json")


def _predict_default(key: str) -> Any:
    """``predict.<key>``'s default in conf/config.yaml (``None`` where it is null)."""
    try:
        return conf_default(f"predict.{key}")
    except KeyError:  # a null default
        return None


def _as_typed(value: Any) -> Any:
    """A value as the command line writes it (``true``, ``null``)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else value


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
        predict_outputs: The keys of :data:`PREDICT_OUTPUT_KEYS` its ``mode=predict`` reads (drawn images,
            a COCO JSON's image ids); another one set away from its default is refused.
        why_not: Why it refuses a setting, by ``"key=value"`` (e.g. ``"mode=distill"``), for the message.
        steps: The post-training steps of ``STEPS`` it implements (``calibrate``: :meth:`calibrate`;
            ``errors``: :meth:`analyse_errors`; ``parity``: :meth:`score_export`; ``card``:
            :meth:`model_card`).
        runtime_adapter: How its exports run in place of its module (``predict.runtime``, a
            :class:`~b4transfer.runtime.choice.RuntimeAdapter`); ``None``: prediction runs in PyTorch.
        schema: The schema of its config (:mod:`b4transfer.settings`: the shared keys plus its ``data``,
            ``head`` and ``loss``), checked once after composition: its module's
            (:attr:`TaskModule.schema`, which types the same groups in a checkpoint's hyper-parameters); a
            module without one: the shared keys only.
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
    predict_outputs: ClassVar[tuple[str, ...]] = ()
    steps: ClassVar[tuple[str, ...]] = ()
    runtime_adapter: ClassVar[Any] = None
    why_not: ClassVar[dict[str, str]] = {}

    @property
    def schema(self) -> type[RunSettings]:
        """The schema of its config (see the class docstring): its module's, else :class:`PluginSettings`."""
        return self.module_class.schema or PluginSettings

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
                raise NotSupportedError(
                    f"task={self.name} does not support {key}={_as_typed(value)}; it supports {supported}"
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
        if cfg.mode == "predict":
            self._refuse_predict_outputs(cfg.get("predict") or {})
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

    def _refuse_predict_outputs(self, predict: Any) -> None:
        """A ``predict.*`` output option of other tasks (``predict.draw=true`` for a classifier) is refused
        instead of ignored: the user asked for an output this task does not write."""
        from b4transfer import tasks  # the registry imports this module

        for key in PREDICT_OUTPUT_KEYS:
            value, default = predict.get(key), _predict_default(key)
            if key in self.predict_outputs or value is None or value == default:
                continue
            readers = [t for t in tasks.names() if key in tasks.get(t).predict_outputs]
            raise NotSupportedError(
                f"task={self.name} does not support predict.{key}={_as_typed(value)} (a setting of "
                f"{' and '.join(f'task={t}' for t in readers)}); it supports predict.{key}="
                f"{_as_typed(default)}. Fix: drop predict.{key} (the checkpoint is a task={self.name} model)."
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
        accepted = self.module_class.init_arguments()
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
