"""``mode=export ckpt_path=...``: the task's exports of a checkpoint (``export.format``) into ``export/``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.modes.common import export_all, export_formats
from b4transfer.runs import prepare_run_dir, resolve_ckpt, write_summary


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint ``cfg.ckpt_path`` in every ``export.format`` its task supports."""
    ckpt = resolve_ckpt(cfg, required=True)
    module = tasks.load_module(ckpt)
    task = tasks.get(module.task_name)
    task.check_config(cfg)
    export_formats(cfg, task)
    run_dir = prepare_run_dir(cfg)
    summary = {"mode": "export", "task": task.name, "checkpoint": ckpt}
    summary.update(export_all(cfg, task, module, run_dir / "export", checkpoint=ckpt))
    write_summary(run_dir, summary)
    return summary
