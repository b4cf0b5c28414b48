"""The modes behind the CLI: ``run(cfg)`` dispatches on ``cfg.mode``; each mode only asks the task.

Every mode writes into ``cfg.run_dir`` (Hydra's run directory when called from the CLI) and returns the
run's summary (also written to ``summary.json``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from b4transfer.backbone import check_weights
from b4transfer.config import plain
from b4transfer.errors import UserError
from b4transfer.modes.audit import audit
from b4transfer.modes.distill import distill
from b4transfer.modes.evaluate import evaluate
from b4transfer.modes.export import export
from b4transfer.modes.lr_find import lr_find
from b4transfer.modes.predict import embed, predict
from b4transfer.modes.push import push
from b4transfer.modes.repeat import plan, train_runs
from b4transfer.modes.train import train
from b4transfer.tasks.base import MODES
from b4transfer.training.trackers import check_loggers

__all__ = [
    "MODES", "audit", "distill", "evaluate", "push", "embed", "export", "lr_find", "predict", "run", "train",
]

_MODES = {
    "train": train,
    "validate": evaluate,
    "test": evaluate,
    "predict": predict,
    "embed": embed,
    "export": export,
    "lr_find": lr_find,
    "audit": audit,
    "push": push,  # uploads an export folder: no task involved
    "distill": distill,  # a training run of a student with a teacher's soft targets
}


def builds_backbone(cfg: DictConfig) -> bool:
    """Whether ``cfg.mode`` builds the configured backbone (``model.pretrained`` / ``model.weights``)
    rather than one from a checkpoint."""
    return cfg.mode in ("train", "lr_find", "audit") or (cfg.mode == "embed" and not cfg.get("ckpt_path"))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.mode`` and return its summary (``seeds`` / ``data.kfold``: every run, and their spread)."""
    if cfg.mode not in _MODES:
        raise UserError(f"mode={cfg.mode!r} is not a mode; choose one of {', '.join(_MODES)}.")
    check_loggers(cfg.get("logger"))  # a tracker whose package is missing: refused before any work
    if builds_backbone(cfg):  # weights problems before any data is read or generated (the demo sets)
        check_weights(plain(cfg.model))
    runs = plan(cfg)
    return train_runs(cfg, runs) if runs else _MODES[cfg.mode](cfg)
