"""``mode=export ckpt_path=...``: the task's exports of a checkpoint (``export.format``) into ``export/``.

``export.format=onnx_int8`` (calibration images) and ``export.parity=true`` (the validation split
scored through each export) read the configured data, which must hold the checkpoint's classes."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from b4transfer.errors import UserError
from b4transfer.modes.common import build_splits, checkpoint_task, export_all, export_formats
from b4transfer.modes.parity import check_parity
from b4transfer.runs import prepare_run_dir, write_summary
from b4transfer.tasks.base import step_setting


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint ``cfg.ckpt_path`` in every ``export.format`` its task supports."""
    ckpt, module, task = checkpoint_task(cfg)
    formats = export_formats(cfg, task)
    parity = step_setting(cfg, "parity") is True
    splits = None
    if parity or "onnx_int8" in formats:
        splits = build_splits(cfg, task, source=f" (from ckpt_path={ckpt})")
        if list(splits.class_names) != list(module.class_names):
            raise UserError(
                f"export.format=onnx_int8 / export.parity=true read data={cfg.data.source._target_}, whose "
                f"classes {splits.class_names} are not the checkpoint's {module.class_names}. Fix: pass the "
                "data the checkpoint was trained on (data=... data.root=...)."
            )
    run_dir = prepare_run_dir(cfg)
    summary = {"mode": "export", "task": task.name, "checkpoint": ckpt}
    summary.update(export_all(cfg, task, module, run_dir / "export", checkpoint=ckpt, samples=splits))
    if parity:
        summary["parity"] = check_parity(cfg, task, module, run_dir / "export", splits=splits)
    if step_setting(cfg, "card") is not False and "card" in task.steps:
        summary["model_card"] = task.model_card(cfg, module, run_dir / "export", summary)
    write_summary(run_dir, summary)
    return summary
