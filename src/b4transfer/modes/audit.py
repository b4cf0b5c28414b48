"""``mode=audit``: the full dataset audit of ``cfg.data`` (:mod:`b4transfer.audit`), and the quick one
every training run starts with (``audit.on_train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.modes.common import build_splits
from b4transfer.runs import prepare_run_dir, write_summary
from b4transfer.tasks.base import Task
from b4transfer.training import distributed


def audit(cfg: DictConfig) -> dict[str, Any]:
    """``mode=audit``: duplicates, leakage, near-duplicates, likely label errors and the task's own checks
    (class balance, boxes vs anchors) of ``cfg.data``: ``audit.md`` and ``audit.json`` in the run dir."""
    task = tasks.from_config(cfg)
    task.check_config(cfg)
    run_dir = prepare_run_dir(cfg)
    # a randomly initialised backbone (model.pretrained=false) is the same one; seed=null: as Lightning, 0
    torch.manual_seed(0 if cfg.seed is None else int(cfg.seed))
    splits = build_splits(cfg, task)
    summary = {"mode": "audit", "task": task.name, "audit": task.audit(cfg, splits, run_dir, full=True)}
    write_summary(run_dir, summary)
    return summary


def pre_train_audit(cfg: DictConfig, task: Task, splits: Any, run_dir: Path) -> dict[str, Any] | None:
    """The quick audit before training (file hashes: duplicates, leakage, conflicting labels; class
    balance), for a task that audits and unless ``audit.on_train=false``."""
    if "audit" not in task.modes or not (cfg.get("audit") or {}).get("on_train", True):
        return None
    if not distributed.is_rank_zero():
        return None
    return task.audit(cfg, splits, run_dir, full=False)
