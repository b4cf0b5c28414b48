"""After training (rank zero): the best checkpoint is calibrated on the validation split (a task that
implements ``calibrate``), exported in every ``export.format``, and each export scored on the validation
split through its own runtime (``parity``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.export.timm_format import atomic_write
from b4transfer.modes.common import export_all
from b4transfer.modes.parity import check_parity
from b4transfer.tasks.base import Task, TaskModule, step_setting

log = logging.getLogger(__name__)


def wants(cfg: DictConfig, task: Task, step: str) -> bool:
    """``calibrate.enabled`` / ``export.parity``: ``null`` runs the step where the task implements it
    (``check_config`` refused ``true`` for a task that does not)."""
    enabled = step_setting(cfg, step)
    return step in task.steps if enabled is None else bool(enabled)


def store_in_checkpoint(path: str | Path, key: str, value: Any) -> None:
    """Set ``hyper_parameters[key]`` of a checkpoint this run wrote (atomically: temp file, then rename),
    so that :func:`b4transfer.tasks.load_module` (predict, export, validate) rebuilds the module with it."""
    path = Path(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"][key] = value
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))  # the umask's permissions, as Lightning's files


def finish(
    cfg: DictConfig, task: Task, module: TaskModule, datamodule: L.LightningDataModule, splits: Any,
    run_dir: Path, summary: dict[str, Any],
) -> dict[str, Any]:
    """Calibrate, export, score and describe (model card) the best checkpoint (else ``module``); the
    summary entries."""
    best = summary["best_checkpoint"]
    final = tasks.load_module(best) if best else module
    out: dict[str, Any] = {}
    if wants(cfg, task, "calibrate"):
        stored, report = task.calibrate(cfg, final, datamodule, run_dir)
        if best:
            store_in_checkpoint(best, "calibration", stored)
        out["calibration"] = {**report, "stored_in": best}
    if wants(cfg, task, "errors"):
        out["error_analysis"] = task.analyse_errors(cfg, final, datamodule, splits, run_dir)
    out.update(export_all(cfg, task, final, run_dir / "export", checkpoint=best, samples=splits))
    if wants(cfg, task, "parity"):
        export_dir = run_dir / "export"
        out["parity"] = check_parity(cfg, task, final, export_dir, splits=splits, datamodule=datamodule)
    if wants(cfg, task, "card"):
        out["model_card"] = task.model_card(cfg, final, run_dir / "export", {**summary, **out})
    return out
