"""The shared LightningModule every task's module extends (:class:`TaskModule`): the backbone / head
optimizer groups and timm scheduler stepping, the validation and test steps, the epoch-end metric hooks,
and the test-time augmentation decision. :mod:`b4transfer.tasks.base` re-exports it beside the task
contract."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from b4transfer.backbone import build_backbone
from b4transfer.backbone.origin import weights_origin
from b4transfer.config import plain
from b4transfer.runtime import tta
from b4transfer.settings import OptimSettings, SchedulerSettings
from b4transfer.settings.module import ModuleSettings
from b4transfer.settings.run import RunSettings
from b4transfer.training.optim import configure

log = logging.getLogger(__name__)

__all__ = ["TaskModule"]

# data.<key> -> where the module's timm data config holds the value it uses (data_setting)
_DATA_CONFIG = {
    "image_size": ("train", "input_size"),
    "eval_image_size": ("eval", "input_size"),
    "crop_pct": ("train", "crop_pct"),
    "eval_crop_pct": ("eval", "crop_pct"),
}


class TaskModule(L.LightningModule):
    """A timm backbone plus a task head: what every task's LightningModule shares.

    What a task's module writes (a subclass):

    - ``__init__``: keyword arguments holding everything needed to rebuild it (a checkpoint holds no
      config): its own (e.g. ``loss``, ``calibration``, as plain values) and ``**shared``, the arguments
      every task takes (see Args), passed to ``super().__init__(**shared)`` (hyper-parameters saved: all
      the arguments of both, ``self.settings`` typed by :attr:`schema`, ``self.class_names``,
      ``self.backbone`` at :meth:`feature_strides`); then ``self.head``, ``self.data_config``
      (``{"train": ..., "eval": ...}`` timm data configs) and, if it has metrics, :meth:`init_metrics`.
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

    Args:
        class_names: label names, index = class id.
        model: backbone settings: ``name``, ``pretrained``, ``weights``, ``drop_path_rate``, ...
        head: the task's head settings (typed by :attr:`schema`).
        optim: ``name``, ``lr``, ``weight_decay``, ``backbone_lr_mult`` and timm optimizer kwargs.
        scheduler: ``name``, ``warmup_epochs`` and timm scheduler kwargs; ``None`` for a constant LR.
        data: the :attr:`data_keys` the module is built with (e.g. ``image_size``, ``mean``, ``std``).
        backbone: an already built backbone (as :meth:`feature_strides` asks, from ``model``); lets a run
            check the weights before it scans the data. Not a hyper-parameter.
    """

    task_name: ClassVar[str] = ""
    # The task's config schema (Task.schema reads it): types the head, loss and data hyper-parameters
    schema: ClassVar[type[RunSettings] | None] = None
    # The data.* keys the module is built with (kept in its hyper-parameters' data): a checkpoint mode
    # rebuilds the module with the checkpoint's, whatever the config says (b4transfer.modes.common)
    data_keys: ClassVar[tuple[str, ...]] = ()
    # Test-time augmentation: the views (b4transfer.runtime.tta) set by mode=validate|test|predict with
    # tta=...;
    # infer() (the eval steps, predict) runs tta_forward while this is set.
    tta: tuple[tta.View, ...] | None = None

    @property
    def image_size(self) -> int:
        """Side of the evaluation input (dense tasks: the square canvas every image is letterboxed to)."""
        return int(self.data_config["eval"]["input_size"][-1])

    # ------------------------------------------------------------------ building
    def __init__(
        self,
        *,
        class_names: Sequence[str],
        model: dict[str, Any],
        head: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        backbone: nn.Module | None = None,
    ) -> None:
        """The start of every task module's ``__init__``: the arguments of this and of the task's
        ``__init__`` saved as the hyper-parameters (all but ``backbone``), the task's name and weights origin
        added (:meth:`remember_task`), the typed settings (:attr:`settings`), ``self.class_names``, and
        ``self.backbone``: ``backbone`` if given (built already, e.g. to check the weights before the data
        scan), else built from ``model`` at :meth:`feature_strides`."""
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])  # Lightning reads the subclasses' __init__ too
        self.remember_task()
        settings = self.settings
        self.class_names = list(class_names)
        self.backbone = backbone if backbone is not None else build_backbone(
            settings.model, self.feature_strides(settings)
        )

    @classmethod
    def init_arguments(cls) -> set[str]:
        """The keyword arguments ``cls(...)`` takes: its ``__init__``'s and, through ``**kwargs``, those
        of the classes it extends (a checkpoint's hyper-parameters hold these and records such as
        ``task``)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]  # after self
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    @classmethod
    def data_settings(cls, data: Any) -> dict[str, Any]:
        """The :attr:`data_keys` that ``data`` (``cfg.data``) sets, as the module's ``data`` argument."""
        data = data or {}
        return {k: plain(data.get(k)) for k in cls.data_keys if data.get(k) is not None}

    def data_setting(self, key: str) -> Any:
        """The value of ``data.<key>`` (one of :attr:`data_keys`) this module uses: its own, else what it
        resolved from the model's pretrained data config (``None`` if neither says)."""
        given = (self.hparams.get("data") or {}).get(key)
        if given is not None:
            return given
        split, entry = _DATA_CONFIG.get(key, ("eval", key))
        value = (getattr(self, "data_config", None) or {}).get(split, {}).get(entry, getattr(self, key, None))
        return value[-1] if entry == "input_size" and value is not None else value

    @property
    def settings(self) -> ModuleSettings:
        """The hyper-parameters' ``model``, ``head``, ``loss`` and ``data``, typed by :attr:`schema` (built
        once; a wrong type is one line naming the key)."""
        typed = self.__dict__.get("_typed_settings")
        if typed is None:
            typed = self.__dict__["_typed_settings"] = ModuleSettings.of(self.hparams, self.schema)
        return typed

    def feature_strides(self, settings: ModuleSettings) -> Sequence[int] | None:
        """The strides of the backbone maps the head reads (a ``features_only`` backbone), or ``None`` for
        pooled features (the default)."""
        return None

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
        # typed now, not at __init__: training scales hparams.optim.lr (optim.lr_scaling) after building
        model, epochs = self.settings.model, max(1, self.trainer.max_epochs or 1)
        return configure(
            backbone=self.backbone,
            head=self.head,
            optim=OptimSettings.of(self.hparams.get("optim"), key="optim"),
            scheduler=SchedulerSettings.of(self.hparams.get("scheduler"), key="scheduler"),
            from_scratch=not (model.pretrained or model.weights),
            split_stages=any(getattr(cb, "needs_stage_groups", False) for cb in self.trainer.callbacks),
            num_epochs=epochs,
            updates_per_epoch=max(1, self.trainer.estimated_stepping_batches // epochs),
        )

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if hasattr(scheduler, "step_update"):
            # timm schedulers are stepped by update count, not by torch's step().
            scheduler.step_update(num_updates=self.global_step)
        else:  # e.g. the LR finder's own torch scheduler
            scheduler.step()
