"""``mode=validate`` / ``mode=test``: metrics of a checkpoint on the configured data; with ``tta=...`` the
metrics with test-time augmentation, and those without it in ``summary.json`` -> ``tta``. With
``predict.runtime=auto|onnxruntime|openvino|onnx_int8`` the task's outputs come from that runtime (as
``mode=predict`` would choose it; ``summary.json`` -> ``runtime``); a detector's loss stays PyTorch's (an
export has no loss)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from b4transfer.errors import UserError
from b4transfer.modes.common import build_splits, checkpoint_task, scalars
from b4transfer.runs import prepare_run_dir, write_summary
from b4transfer.runtime import tta
from b4transfer.runtime.choice import Choice, choose, requested
from b4transfer.training.trackers import finish_trackers
from b4transfer.training.trainer import build_trainer


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate or test the checkpoint ``cfg.ckpt_path`` on ``cfg.data`` (val, or the test split)."""
    ckpt, module, task = checkpoint_task(cfg)
    run_dir = prepare_run_dir(cfg)
    splits = build_splits(cfg, task, source=f" (the checkpoint {ckpt} is a task={task.name} model)")
    if list(splits.class_names) != module.class_names:
        raise UserError(
            f"The data's classes {splits.class_names} differ from the checkpoint's {module.class_names} "
            f"({ckpt}). Evaluate on data with the same class folders/labels."
        )
    datamodule = task.build_datamodule(cfg, splits, module)
    choice = _runtime(cfg, task, module, splits, ckpt, run_dir)
    trainer = build_trainer(cfg, run_dir, monitor=task.monitor)
    fn = trainer.validate if cfg.mode == "validate" else trainer.test
    with choice.patch(module):
        results = fn(module, datamodule=datamodule)
    summary = {
        "mode": cfg.mode,
        "task": task.name,
        "checkpoint": ckpt,
        "metrics": scalars(results[0] if results else {}),
    }
    if requested(cfg) != "torch":
        summary["runtime"] = choice.report
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


def _runtime(cfg: DictConfig, task, module, splits, ckpt: str, run_dir) -> Choice:
    """``predict.runtime`` for the evaluated split: the choice ``mode=predict`` makes, sampled on the
    split's first ``predict.check_agreement`` images (INT8 calibrated on the training split's), so the
    metrics are those of what prediction would ship."""
    if requested(cfg) == "torch":
        return choose(cfg, task, module, paths=[])
    samples = splits.val if cfg.mode == "validate" else splits.test
    return choose(cfg, task, module, paths=[getattr(s, "path", s) for s in samples],
                  calibration=[getattr(s, "path", s) for s in splits.train], ckpt=ckpt, run_dir=run_dir)
