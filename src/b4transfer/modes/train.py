"""``mode=train``: fine-tune, keep best + last checkpoints, export the best weights, write ``summary.json``.

``train(cfg) -> summary`` needs no Hydra: tests call it with a composed config. Everything it does is
asked of the task (``cfg.task``, see :mod:`b4transfer.tasks`).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from b4transfer import devices, distributed, tasks
from b4transfer.callbacks import ThroughputMeter
from b4transfer.checkpointing import SIGTERM_EXIT_CODE, continue_requeued_job
from b4transfer.config import plain
from b4transfer.modes.audit import pre_train_audit
from b4transfer.modes.common import build_splits, check_resumable, export_formats, scalars
from b4transfer.modes.finish import finish
from b4transfer.runs import prepare_run_dir, resolve_ckpt, write_summary
from b4transfer.speed import apply_speed_switches
from b4transfer.trackers import finish_trackers
from b4transfer.trainer import build_trainer, early_stopping_report

log = logging.getLogger(__name__)

# prepare_run_dir guarantees a fresh run dir (it only holds our resolved config): Lightning's warning
# that "previous log files will be deleted" would only alarm users.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def train(
    cfg: DictConfig, *, callbacks: Sequence[L.Callback] = (), task: tasks.Task | None = None
) -> dict[str, Any]:
    """Fine-tune ``cfg.task`` on ``cfg.data``; ``callbacks`` are extra Lightning callbacks; ``task``: the
    task to ask instead of ``cfg.task``'s (``mode=distill`` passes one that distils)."""
    task = task or tasks.from_config(cfg)
    task.check_config(cfg)
    cfg, ckpt = continue_requeued_job(cfg, resolve_ckpt(cfg, required=False))
    export_formats(cfg, task)  # a bad export.format fails now, not after training
    run_dir = prepare_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    backbone = task.build_backbone(cfg)  # weights problems surface before the data scan
    splits = build_splits(cfg, task)
    audit = pre_train_audit(cfg, task, splits, run_dir)  # duplicates, leakage, conflicting labels
    precision = devices.resolve_precision(plain(cfg.trainer), announce=True)  # auto: this device's fastest
    module = task.build_module(cfg, splits, backbone)
    module = apply_speed_switches(module, cfg.model, precision.channels_last, precision.fp32_depthwise)
    if ckpt:
        check_resumable(ckpt, task, module)
    datamodule = task.build_datamodule(cfg, splits, module)
    meter = ThroughputMeter()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[meter, *callbacks], monitor=task.monitor)
    plan = devices.batch_plan(trainer, per_device=int(cfg.data.batch_size), optim=plain(cfg.optim))
    module.hparams.optim["lr"] = plan["lr"]
    start = time.perf_counter()
    try:
        with distributed.hydra_ddp_launch():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except SIGTERMException:
        _stopped_by_sigterm(trainer, run_dir, time.perf_counter() - start)
    summary = _summary(cfg, trainer, splits, plan, meter, wall=time.perf_counter() - start, run_dir=run_dir)
    summary["precision_plan"] = _precision_plan(cfg, trainer, precision)
    summary.update(task=task.name, audit=audit, **task.summary(splits, datamodule))
    if trainer.is_global_zero:  # calibrate the best checkpoint on validation, export it
        summary.update(finish(cfg, task, module, datamodule, splits, run_dir, summary))
    write_summary(run_dir, summary)
    finish_trackers(trainer, run_dir)  # summary, export, plots -> the trackers (MLflow, W&B)
    if distributed.is_rank_zero():
        log.info("Run directory: %s", run_dir)
    return summary


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
