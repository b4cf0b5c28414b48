"""``mode=validate`` / ``mode=test``: metrics of a checkpoint on the configured data; with ``tta=...`` the
metrics with test-time augmentation, and those without it in ``summary.json`` -> ``tta``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from b4transfer import tasks, tta
from b4transfer.errors import UserError
from b4transfer.modes.common import build_splits, scalars
from b4transfer.runs import prepare_run_dir, resolve_ckpt, write_summary
from b4transfer.trackers import finish_trackers
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
    if tta.views(cfg.get("tta")):
        module.tta = tta.views(cfg.tta)
        with_tta = fn(module, datamodule=datamodule)
        without, summary["metrics"] = summary["metrics"], scalars(with_tta[0] if with_tta else {})
        monitor = (cfg.get("checkpoint") or {}).get("monitor") or task.monitor
        monitor = monitor.replace("val/", "test/", 1) if cfg.mode == "test" else monitor
        summary["tta"] = tta.monitor_report(cfg.tta, without, summary["metrics"], monitor)
    write_summary(run_dir, summary)
    finish_trackers(trainer, run_dir)
    return summary
