"""``mode=validate`` / ``mode=test``: metrics of a checkpoint on the configured data."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.errors import UserError
from b4transfer.modes.common import build_splits, scalars
from b4transfer.runs import prepare_run_dir, resolve_ckpt, write_summary
from b4transfer.trainer import build_trainer


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate or test the checkpoint ``cfg.ckpt_path`` on ``cfg.data`` (val, or the test split)."""
    ckpt = resolve_ckpt(cfg, required=True)
    module = tasks.load_module(ckpt)
    task = tasks.get(module.task_name)
    task.check_config(cfg)
    run_dir = prepare_run_dir(cfg)
    splits = build_splits(cfg, task, source=f" (the checkpoint {ckpt} is a task={task.name} model)")
    if list(splits.class_names) != module.class_names:
        raise UserError(
            f"The data's classes {splits.class_names} differ from the checkpoint's {module.class_names} "
            f"({ckpt}). Evaluate on data with the same class folders/labels."
        )
    datamodule = task.build_datamodule(cfg, splits, module)
    trainer = build_trainer(cfg, run_dir, monitor=task.monitor)
    fn = trainer.validate if cfg.mode == "validate" else trainer.test
    results = fn(module, datamodule=datamodule)
    summary = {
        "mode": cfg.mode,
        "task": task.name,
        "checkpoint": ckpt,
        "metrics": scalars(results[0] if results else {}),
    }
    write_summary(run_dir, summary)
    return summary
