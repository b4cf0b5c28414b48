"""The Lightning Trainer every mode uses: callbacks (checkpoints, early stopping, schedule, EMA, LR monitor)
and devices."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from omegaconf import DictConfig

from b4transfer.config import plain
from b4transfer.errors import UserError
from b4transfer.settings import EmaSettings
from b4transfer.training import devices
from b4transfer.training.callbacks import progress_bar
from b4transfer.training.checkpointing import (
    BestCheckpoint,
    CheckpointOnSigterm,
    best_weights_only,
    step_checkpoint,
)
from b4transfer.training.ema import EMA
from b4transfer.training.trackers import ConfigParams, build_loggers


def build_trainer(
    cfg: DictConfig, run_dir: Path, *, extra_callbacks=(), monitor: str = "val/acc1"
) -> L.Trainer:
    """The Lightning Trainer of a run: best + last checkpoints, early stopping, the fine-tuning schedule,
    LR monitor, EMA, SIGTERM checkpoint, progress bar; ``monitor``: the task's ``checkpoint.monitor``."""
    ckpt_cfg = plain(cfg.get("checkpoint")) or {}
    monitor, mode = ckpt_cfg.get("monitor") or monitor, ckpt_cfg.get("mode", "max")
    loggers = build_loggers(cfg.get("logger"))
    callbacks = [
        BestCheckpoint(
            run_dir / "checkpoints",
            monitor=monitor,
            mode=mode,
            save_top_k=ckpt_cfg.get("save_top_k", 1),
            weights_only=best_weights_only(ckpt_cfg.get("best_weights_only", False)),
        ),
        # last.ckpt: the latest state every epoch (Lightning's save_last only rewrites it when the
        # monitored metric improves, so a plateau would leave it behind)
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
        *([instantiate(cfg.finetune)] if cfg.get("finetune") else []),  # before the LR monitor: it sets LRs
        *([LearningRateMonitor(logging_interval="step")] if loggers else []),  # it fails without a logger
        *ema_callbacks(cfg.get("ema")),
        *early_stopping(cfg.get("early_stopping"), monitor=monitor, mode=mode),
        *[instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c],  # +callbacks.NAME._target_=
        CheckpointOnSigterm(run_dir / "checkpoints"),
        ConfigParams(cfg),  # the resolved config as params of the trackers (MLflow, W&B)
        *extra_callbacks,
    ]
    every_n = step_checkpoint(run_dir / "checkpoints", ckpt_cfg.get("every_n_train_steps"))
    callbacks += [every_n] if every_n else []
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(progress_bar(cfg.trainer.get("log_every_n_steps") or 50))
    trainer = L.Trainer(
        **devices.trainer_kwargs(plain(cfg.trainer), plain(cfg.get("strategy"))),
        default_root_dir=str(run_dir),
        callbacks=callbacks,
        logger=loggers or False,
    )
    devices.check_trainer(trainer, sync_batchnorm=bool(cfg.trainer.get("sync_batchnorm")))
    return trainer


def check_monitor(cfg: DictConfig, module: L.LightningModule, *, default: str, task: str = "") -> None:
    """Refuse, before training, a ``checkpoint.monitor`` (what the best checkpoint and early stopping
    watch) that the task's module does not log (``module.logged_metric_names()``). Names outside the task's
    ``train/`` and ``val/`` metrics (``lr-...``, ``time/elapsed_s``, a callback's own) are left to
    Lightning."""
    monitor = (cfg.get("checkpoint") or {}).get("monitor") or default
    names = module.logged_metric_names() if hasattr(module, "logged_metric_names") else None
    ours = "/" not in monitor or monitor.split("/")[0] in ("train", "val", "test")  # not lr-..., time/...
    if names is None or monitor in names or not ours:
        return
    watchers = "the best checkpoint" + (
        " and early stopping" if (cfg.get("early_stopping") or {}).get("patience") is not None else ""
    )
    shown = ", ".join(names[:16]) + (f", ... ({len(names)} in all)" if len(names) > 16 else "")
    raise UserError(
        f"checkpoint.monitor={monitor} is not a metric {f'task={task}' if task else 'this task'} logs, so "
        f"{watchers} would fail after the first epoch. It logs: {shown}. Fix: checkpoint.monitor={default} "
        "(the task's default) or another of those."
    )


def ema_callbacks(ema: DictConfig | EmaSettings | None) -> list:
    """``[EMA(...)]`` when ``ema.enabled``, else ``[]`` (and when there is no ``ema`` node). ``ema``: the
    config node (typed here, the keys it lacks from ``conf/config.yaml``) or :class:`EmaSettings`."""
    if not ema:
        return []
    settings = ema if isinstance(ema, EmaSettings) else EmaSettings.of(ema, key="ema")
    if not settings.enabled:
        return []
    return [EMA(**settings.kwargs("enabled"))]


def early_stopping(cfg: DictConfig | None, *, monitor: str, mode: str) -> list:
    """``[EarlyStopping(...)]`` on the checkpoint's metric if ``early_stopping.patience`` is set, else ``[]``.

    It watches the same metric as the best checkpoint, so the exported (best) weights are those of the
    epoch early stopping measured as best.
    """
    patience = (cfg or {}).get("patience")
    if patience is None:
        return []
    if int(patience) < 1:
        raise UserError(f"early_stopping.patience={patience} must be a whole number >= 1, or null (off).")
    return [EarlyStopping(monitor=monitor, mode=mode, patience=int(patience),
                          min_delta=float(cfg.get("min_delta") or 0.0))]


def early_stopping_report(trainer: L.Trainer) -> dict | None:
    """What ``summary.json`` says about early stopping: ``None`` when it was off; ``stopped_epoch`` is the
    last epoch run, counted from 1 as the per-epoch line and the checkpoint names count."""
    es = trainer.early_stopping_callback
    if es is None:
        return None
    stopped = es.stopping_reason != EarlyStoppingReason.NOT_STOPPED
    return {
        "stopped_epoch": es.stopped_epoch + 1 if stopped else None,  # counted from 1, as the console
        "reason": es.stopping_reason_message if stopped else None,
        "best_score": float(es.best_score) if torch.isfinite(es.best_score) else None,
        "monitor": es.monitor,
        "patience": es.patience,
        "min_delta": abs(float(es.min_delta)),
    }
