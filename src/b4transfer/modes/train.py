"""``mode=train``: fine-tune, keep best + last checkpoints, export the best weights, write ``summary.json``.

``train(cfg) -> summary`` needs no Hydra: tests call it with a composed config; :func:`setup` builds
the module, datamodule and trainer without fitting (the Python API's ``build``). Everything it does is
asked of the task (``cfg.task``, see :mod:`b4transfer.tasks`).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.config import plain
from b4transfer.modes.audit import pre_train_audit
from b4transfer.modes.common import build_splits, check_resumable, export_formats, scalars
from b4transfer.modes.finish import finish
from b4transfer.runs import prepare_run_dir, resolve_ckpt, write_summary
from b4transfer.runtime.speed import apply_speed_switches
from b4transfer.training import devices, distributed
from b4transfer.training.callbacks import ThroughputMeter
from b4transfer.training.checkpointing import SIGTERM_EXIT_CODE, checkpoint_epoch, continue_requeued_job
from b4transfer.training.finetuning import check_batch_of_one
from b4transfer.training.trackers import finish_trackers
from b4transfer.training.trainer import build_trainer, check_monitor, early_stopping_report

log = logging.getLogger(__name__)

# prepare_run_dir guarantees a fresh run dir (it only holds our resolved config): Lightning's warning
# that "previous log files will be deleted" would only alarm users.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


@dataclass
class TrainingParts:
    """What a training run is made of, built and checked, before ``trainer.fit``: the Lightning objects
    for users who drive them themselves (:func:`b4transfer.api.build`), and what :func:`train` reports.

    Attributes:
        cfg: The run's config (``run_dir`` moved for a requeued SLURM job).
        task: The :class:`~b4transfer.tasks.base.Task` of ``cfg.task``.
        run_dir: The run directory (created; it holds ``config_resolved.yaml``).
        ckpt: The checkpoint the run resumes from, or ``None``.
        splits: The checked data splits.
        module: The task's LightningModule.
        datamodule: The task's LightningDataModule.
        trainer: The Lightning Trainer (checkpoints, schedule, EMA, loggers, ...).
        precision: The resolved precision plan.
        plan: The batch plan (global batch, scaled learning rate).
        meter: The throughput callback on ``trainer``.
        audit: The quick data audit's counts.
    """

    cfg: DictConfig
    task: Any
    run_dir: Path
    ckpt: str | None
    splits: Any
    module: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer
    precision: devices.PrecisionPlan
    plan: dict[str, Any]
    meter: ThroughputMeter
    audit: Any


def setup(
    cfg: DictConfig, *, callbacks: Sequence[L.Callback] = (), task: tasks.Task | None = None
) -> TrainingParts:
    """Check ``cfg``, create the run directory and build everything :func:`train` fits; ``task``: the task
    to ask instead of ``cfg.task``'s (``mode=distill`` passes one that distils)."""
    task = task or tasks.from_config(cfg)
    task.check_config(cfg)
    cfg, ckpt = continue_requeued_job(cfg, resolve_ckpt(cfg, required=False))
    if ckpt:
        check_resumable(ckpt, task)  # a file that is no checkpoint, or another task's: before any work
    export_formats(cfg, task)  # a bad export.format fails now, not after training
    run_dir = prepare_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    backbone = task.build_backbone(cfg)  # weights problems surface before the data scan
    splits = build_splits(cfg, task)
    audit = pre_train_audit(cfg, task, splits, run_dir)  # duplicates, leakage, conflicting labels
    precision = devices.resolve_precision(plain(cfg.trainer), announce=True)  # auto: this device's fastest
    module = task.build_module(cfg, splits, backbone)
    module = apply_speed_switches(module, cfg.model, precision.channels_last, precision.fp32_depthwise)
    _check_before_fit(cfg, task, module, len(splits.train), ckpt)
    datamodule = task.build_datamodule(cfg, splits, module)
    meter = ThroughputMeter()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[meter, *callbacks], monitor=task.monitor)
    plan = devices.batch_plan(trainer, per_device=int(cfg.data.batch_size), optim=plain(cfg.optim))
    module.hparams.optim["lr"] = plan["lr"]
    return TrainingParts(cfg, task, run_dir, ckpt, splits, module, datamodule, trainer, precision, plan,
                         meter, audit)


def train(
    cfg: DictConfig, *, callbacks: Sequence[L.Callback] = (), task: tasks.Task | None = None
) -> dict[str, Any]:
    """Fine-tune ``cfg.task`` on ``cfg.data``; ``callbacks`` are extra Lightning callbacks; ``task``: as
    :func:`setup`'s."""
    began = time.perf_counter()
    run = setup(cfg, callbacks=callbacks, task=task)
    cfg, trainer, run_dir, splits = run.cfg, run.trainer, run.run_dir, run.splits
    start = time.perf_counter()
    try:
        with distributed.hydra_ddp_launch():
            trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.ckpt)
    except SIGTERMException:
        _stopped_by_sigterm(trainer, run_dir, time.perf_counter() - start)
    summary = _summary(cfg, trainer, splits, run.plan, run.meter, wall=time.perf_counter() - start,
                       run_dir=run_dir)
    summary["precision_plan"] = _precision_plan(cfg, trainer, run.precision)
    summary.update(task=run.task.name, audit=run.audit, **run.task.summary(splits, run.datamodule))
    if trainer.is_global_zero:  # calibrate the best checkpoint on validation, export it
        summary.update(finish(cfg, run.task, run.module, run.datamodule, splits, run_dir, summary))
    write_summary(run_dir, summary)
    finish_trackers(trainer, run_dir)  # summary, export, plots -> the trackers (MLflow, W&B)
    if distributed.is_rank_zero():
        for line in closing_lines(summary, trainer, run_dir, time.perf_counter() - began):
            log.info(line)
    return summary


def _check_before_fit(cfg: DictConfig, task, module, train_images: int, ckpt: str | None) -> None:
    """What the built module can tell before training rather than after epoch 1 or mid-epoch."""
    check_monitor(cfg, module, default=task.monitor, task=task.name)
    check_batch_of_one(cfg, module, train_images)  # BatchNorm on 1 value per channel
    if ckpt:
        check_resumable(ckpt, task, module)  # the checkpoint's shapes fit this run's model


def closing_lines(summary: dict[str, Any], trainer: L.Trainer, run_dir: Path, seconds: float) -> list[str]:
    """What a finished run prints last: the best metric (name, value, epoch counted from 1 as the epoch
    lines), the best checkpoint, the wall time; then the export and the run directory."""
    monitor, best = trainer.checkpoint_callback.monitor, summary.get("best_checkpoint")
    total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    if best and summary.get("best_score") is not None:
        epoch = checkpoint_epoch(best)
        at = f" at epoch {epoch}{total}" if epoch else ""
        first = f"best {monitor} {summary['best_score']:.4g}{at} ({best})"
    else:
        first = f"no best checkpoint ({monitor} was not logged)"
    export = summary.get("export_dir")
    return [
        f"Done in {_duration(seconds)}: {first}.",
        (f"Export: {export}   " if export else "") + f"Run directory: {run_dir}",
    ]


def _duration(seconds: float) -> str:
    """``42.1 s``, ``3 min 07 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _summary(cfg, trainer: L.Trainer, splits, plan, meter, *, wall: float, run_dir: Path) -> dict[str, Any]:
    best_score = trainer.checkpoint_callback.best_model_score
    return {
        "mode": cfg.mode,  # train, or distill
        "model": cfg.model.name,
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "skipped_images": len(splits.skipped),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "precision": str(trainer.precision),
        "batch": plan,
        "wall_time_s": round(wall, 2),
        "train_images_per_s": meter.images_per_s,
        "metrics": scalars(trainer.callback_metrics),
        "best_checkpoint": trainer.checkpoint_callback.best_model_path or None,
        "best_score": float(best_score) if best_score is not None else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "early_stopping": early_stopping_report(trainer),
    }


def _precision_plan(cfg, trainer: L.Trainer, precision: devices.PrecisionPlan) -> dict[str, Any]:
    return {
        **precision.as_dict(),
        "used": str(trainer.precision),  # Lightning may change it (16-mixed on a CPU runs bf16-mixed)
        "channels_last": precision.channels_last or bool(cfg.model.get("channels_last")),
    }


def _stopped_by_sigterm(trainer: L.Trainer, run_dir: Path, wall: float) -> None:
    """After SIGTERM: record where to resume, then exit with status 143 (no traceback, no export)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    summary = {
        "mode": "train",
        "stopped_by": "SIGTERM",
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(wall, 2),
        "resume_checkpoint": str(last) if last.is_file() else None,
    }
    write_summary(run_dir, summary)
    if distributed.is_rank_zero():
        print(
            f"b4transfer: stopped by SIGTERM at step {trainer.global_step}; resume with ckpt_path={last}",
            file=sys.stderr,
        )
    raise SystemExit(SIGTERM_EXIT_CODE)
