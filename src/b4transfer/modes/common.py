"""What several modes share: the checked data splits, the export formats (and the backbone every export
carries), metric values."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.backbone.downstream import BACKBONE_DIR, export_backbone
from b4transfer.compose import format_override
from b4transfer.config import conf_default, plain
from b4transfer.data.kfold import check_kfold, fold_splits
from b4transfer.errors import UserError
from b4transfer.runs import resolve_ckpt
from b4transfer.settings import ExportSettings, given_keys
from b4transfer.tasks.base import EXPORT_FORMATS, Task, TaskModule

log = logging.getLogger(__name__)


def checkpoint_task(cfg: DictConfig) -> tuple[str, TaskModule, Task]:
    """A checkpoint mode's start: the checkpoint ``cfg.ckpt_path`` (required), the module rebuilt from it and
    its task, with the run's config checked for that task and a warning for each ignored ``data`` key
    (:func:`warn_ignored_data`)."""
    ckpt = resolve_ckpt(cfg, required=True)
    module = tasks.load_module(ckpt)
    task = tasks.get(module.task_name)
    task.check_config(cfg)
    warn_ignored_data(cfg, module, ckpt)
    return ckpt, module, task


def build_splits(cfg: DictConfig, task: Task, *, source: str = "") -> Any:
    """Instantiate ``cfg.data.source`` and check it gives the data ``task`` takes, with the classes
    ``num_classes`` states. ``source`` names where the task came from (e.g. a checkpoint)."""
    splits = instantiate(cfg.data.source)
    if not isinstance(splits, task.splits_type):
        other = tasks.for_splits(splits)
        kind = other.name if other else type(splits).__name__
        fix = f"use {task.data_hint}" if task.data_hint else "use a data source of this task"
        raise UserError(
            f"task={task.name}{source} but the data source ({cfg.data.source._target_}) gives {kind} data. "
            f"Fix: {fix}" + (f", or task={other.name}." if other and not source else ".")
        )
    kfold, fold = check_kfold(plain(cfg.data.get("kfold")), plain(cfg.data.get("fold")))
    if fold is not None:  # data.kfold=K data.fold=i: fold i validates, the others train
        splits = fold_splits(splits, k=kfold, index=fold, source=f"data.source {cfg.data.source._target_}")
    if cfg.get("num_classes") is not None and int(cfg.num_classes) != splits.num_classes:
        raise UserError(
            f"num_classes={cfg.num_classes} but the data holds {splits.num_classes} classes "
            f"({', '.join(splits.class_names)}). Remove num_classes from the config (it is read from "
            "the data) or fix the data."
        )
    log.info(
        "Data: %d classes, %d train / %d val / %d test images%s",
        splits.num_classes,
        len(splits.train),
        len(splits.val),
        len(splits.test),
        f", {len(splits.skipped)} unreadable skipped" if splits.skipped else "",
    )
    return splits


def export_formats(cfg: DictConfig, task: Task) -> list[str]:
    """The checked ``export.format`` list (a name or a list of names) for ``task``."""
    value = plain((cfg.get("export") or {}).get("format", "timm"))
    formats = [value] if isinstance(value, str) else list(value or [])
    if not formats or any(f not in EXPORT_FORMATS for f in formats):
        raise UserError(
            f"export.format={value!r} is not supported; use one of {', '.join(EXPORT_FORMATS)}, or a list "
            "such as export.format=[timm,onnx]."
        )
    for fmt in formats:
        task.refuse("export.format", fmt, task.export_formats)
    if "onnx_int8" in formats:
        default = conf_default("export.int8_calibration_images")
        count = (cfg.get("export") or {}).get("int8_calibration_images", default)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(
                f"export.int8_calibration_images={count!r}: export.format=onnx_int8 calibrates the INT8 "
                "quantisation on that many training images, so it needs at least 1. Fix: e.g. "
                "export.int8_calibration_images=64 (the default)."
            )
    if {"onnx", "onnx_int8", "openvino"} & set(formats):
        from b4transfer.export.artifacts import require_onnx

        require_onnx()
    if "openvino" in formats:
        from b4transfer.runtime.runtimes import require_openvino

        require_openvino()
    return formats


def export_all(
    cfg: DictConfig, task: Task, module: TaskModule, out_dir: Path, *, checkpoint: str | None, samples=None
) -> dict[str, Any]:
    """Export in every ``export.format``; returns the summary entries (``export_dir``, ``onnx``, ...).
    ``samples``: the run's data splits, after training."""
    out: dict[str, Any] = {"export_dir": str(out_dir)}
    formats = export_formats(cfg, task)  # checked first: one line naming a format the task has not
    settings = ExportSettings.of(cfg.get("export"), key="export")
    for fmt in formats:
        out.update(task.export(fmt, module, out_dir, cfg=cfg, checkpoint=checkpoint, samples=samples))
    if settings.backbone is not False:
        out["backbone_dir"] = str(export_module_backbone(module, out_dir / BACKBONE_DIR))
    return out


def export_module_backbone(module: TaskModule, out_dir: Path) -> Path:
    """``module``'s fine-tuned backbone in timm's hub layout (``export/backbone/``: ``config.json`` +
    ``model.safetensors``), for ``timm.create_model("local-dir:...", pretrained=True, features_only=True)``
    (:mod:`b4transfer.backbone.downstream`)."""
    return export_backbone(
        module.backbone,
        out_dir,
        model_name=module.hparams.model["name"],
        data_config=module.data_config,
        task=module.task_name,
        weights_origin=module.hparams.get("weights_origin"),
    )


def warn_ignored_data(cfg: DictConfig, module: TaskModule, ckpt: str) -> list[str]:
    """A checkpoint mode rebuilds ``module`` from ``ckpt``: the ``data`` keys it is built with
    (:attr:`TaskModule.data_keys`, e.g. ``data.image_size``) are the checkpoint's. One warning line for each
    such key the run was given (:func:`b4transfer.settings.given_keys`; when not known, each one set) with
    another value: the key, the value used instead, and why. Returns the lines."""
    given = given_keys(cfg)
    data = cfg.get("data") or {}
    lines = []
    for key in module.data_keys:
        value = plain(data.get(key))
        if value is None or (given is not None and f"data.{key}" not in given):
            continue
        used = module.data_setting(key)
        if _same(value, used):
            continue
        saved = "it was trained with" if (module.hparams.get("data") or {}).get(key) is not None else (
            "the model's own, as it was trained"
        )
        asked, kept = (format_override(f"data.{key}", v) for v in (value, used))
        lines.append(
            f"{asked} is not used: mode={cfg.mode} rebuilds the model from its checkpoint ({ckpt}), "
            f"which uses {kept} ({saved}). Fix: drop data.{key}, or train with it."
        )
        log.warning(lines[-1])
    return lines


def _same(a: Any, b: Any) -> bool:
    """Equal as plain values (tuples as lists; numbers as floats)."""
    def norm(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    return norm(a) == norm(b)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The one-number entries of Lightning's metrics, as floats."""
    return {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}


def check_resumable(ckpt: str, task: Task, module: TaskModule | None = None) -> None:
    """Refuse, before training, to resume from a file that is not a checkpoint, a checkpoint of another
    task or (given the ``module`` built for this run) of another model shape."""
    checkpoint = tasks.read_checkpoint(ckpt)
    hparams = checkpoint["hyper_parameters"]
    saved = tasks.get(hparams.get("task"))
    if saved is not task:
        raise UserError(
            f"ckpt_path={ckpt} holds a task={saved.name} model, but this run is task={task.name}. "
            f"Fix: resume with task={saved.name} (and its data), or pass a task={task.name} checkpoint."
        )
    if "optimizer_states" not in checkpoint:
        raise UserError(
            f"ckpt_path={ckpt} holds only the weights (a best checkpoint kept with "
            "checkpoint.best_weights_only=true): no optimizer or schedule state to resume. Fix: resume from "
            "the run's checkpoints/last.ckpt (or ckpt_path=last), or start a new run from its backbone with "
            f"model.weights={ckpt} and no ckpt_path."
        )
    if module is None:
        return
    ours, theirs = module.state_dict(), checkpoint["state_dict"]
    misfit = [k for k in ours if k not in theirs or tuple(theirs[k].shape) != tuple(ours[k].shape)]
    misfit += [k for k in theirs if k not in ours]
    if misfit:
        changed = [
            f"{group}.{key}: {old!r} in the checkpoint, {new!r} now"
            for group in ("model", "head", "data")
            for key, new in (module.hparams.get(group) or {}).items()
            if key not in ("pretrained", "weights")
            and (old := (hparams.get(group) or {}).get(key, new)) != new
        ]
        raise UserError(
            f"ckpt_path={ckpt} does not fit the configured model ({len(misfit)} weights differ, e.g. "
            f"{', '.join(misfit[:3])}); changed settings: {'; '.join(changed) or 'none found'}. Fix: resume "
            "with the settings the checkpoint was trained with, or start a new run without ckpt_path."
        )
