"""The Lightning Trainer every mode uses: callbacks (checkpoints, schedule, EMA, LR monitor) and devices."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig

from b4transfer import devices
from b4transfer.callbacks import progress_bar
from b4transfer.checkpointing import CheckpointOnSigterm, step_checkpoint
from b4transfer.config import plain
from b4transfer.ema import EMA


def build_trainer(
    cfg: DictConfig, run_dir: Path, *, extra_callbacks=(), monitor: str = "val/acc1"
) -> L.Trainer:
    """The Lightning Trainer of a run: best + last checkpoints, the fine-tuning schedule, LR monitor, EMA,
    SIGTERM checkpoint, progress bar; ``monitor`` is the task's default ``checkpoint.monitor``."""
    ckpt_cfg = plain(cfg.get("checkpoint")) or {}
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if v is not None]
    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor=ckpt_cfg.get("monitor") or monitor,
            mode=ckpt_cfg.get("mode", "max"),
            save_top_k=ckpt_cfg.get("save_top_k", 1),
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
        *[instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c],  # +callbacks.NAME._target_=
        CheckpointOnSigterm(run_dir / "checkpoints"),
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


def ema_callbacks(ema: DictConfig | None) -> list:
    """``[EMA(...)]`` when ``ema.enabled``, else ``[]``."""
    if not ema or not ema.get("enabled"):
        return []
    return [EMA(**{k: v for k, v in plain(ema).items() if k != "enabled"})]
