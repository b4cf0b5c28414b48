"""Entry points behind the CLI: ``run(cfg)`` dispatches on ``cfg.mode``.

``train(cfg) -> metrics`` is pure (no Hydra needed): tests call it with a composed config.
Every mode writes into ``cfg.run_dir`` (Hydra's run directory when called from the CLI).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from b4transfer import devices, distributed
from b4transfer.callbacks import ThroughputMeter, progress_bar
from b4transfer.checkpointing import (
    SIGTERM_EXIT_CODE,
    CheckpointOnSigterm,
    continue_requeued_job,
    find_last_checkpoint,
    step_checkpoint,
)
from b4transfer.data.datamodule import ClassificationDataModule
from b4transfer.data.detection_datamodule import DetectionDataModule
from b4transfer.data.splits import DatasetSplits
from b4transfer.data.transforms import DRAFT_FACTOR
from b4transfer.ema import EMA
from b4transfer.export import export_timm
from b4transfer.feature_cache import CachedFeatureDataModule, enable_feature_cache
from b4transfer.module import TransferModule, build_backbone, load_module
from b4transfer.module_detection import DEFAULT_STRIDES, build_feature_backbone, check_task
from b4transfer.speed import apply_speed_switches

log = logging.getLogger(__name__)

# prepare_run_dir guarantees a fresh run dir (it only holds our resolved config): Lightning's warning
# that "previous log files will be deleted" would only alarm users.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")

MODES = ("train", "validate", "test", "predict", "embed", "export", "lr_find")
EXPORT_FORMATS = ("timm", "onnx")
# Files whose presence means a directory already holds a finished or running run.
_RUN_MARKERS = ("summary.json", "checkpoints", "metrics.csv", "export", "predictions.csv")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.mode`` and return its summary."""
    from b4transfer import predict as predict_mod
    from b4transfer.lr_find import lr_find

    modes = {
        "train": train,
        "validate": evaluate,
        "test": evaluate,
        "predict": predict_mod.predict,
        "embed": predict_mod.embed,
        "export": export,
        "lr_find": lr_find,
    }
    if cfg.mode not in modes:
        raise ValueError(f"mode={cfg.mode!r} is not a mode; choose one of {', '.join(MODES)}.")
    return modes[cfg.mode](cfg)


# ------------------------------------------------------------------ helpers
def is_rank_zero() -> bool:
    return distributed.is_rank_zero()


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory, refuse to reuse one holding an earlier run, save the resolved config."""
    run_dir = Path(cfg.run_dir)
    if is_rank_zero():
        taken = [m for m in _RUN_MARKERS if (run_dir / m).exists()]
        if taken:
            raise FileExistsError(
                f"Run directory {run_dir} already holds an earlier run ({', '.join(taken)}); "
                "b4transfer never overwrites a run. Use a new hydra.run.dir=..., or to continue that "
                f"run pass ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}."
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_splits(cfg: DictConfig) -> DatasetSplits:
    """Instantiate ``cfg.data.source`` (a function returning :class:`DatasetSplits`) and check it."""
    splits = instantiate(cfg.data.source)
    task, kind = task_of(cfg), getattr(splits, "task", "classification")
    if kind != task:
        fix = {
            "detection": "data=coco, data=yolo or data=demo_detection",
            "classification": "data=folder, data=csv or data=demo",
        }[task]
        raise ValueError(
            f"task={task} but the data source ({cfg.data.source._target_}) gives {kind} data. "
            f"Fix: use {fix}, or task={kind}."
        )
    if cfg.get("num_classes") is not None and int(cfg.num_classes) != splits.num_classes:
        raise ValueError(
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


def data_overrides(cfg: DictConfig) -> dict[str, Any]:
    keys = ("image_size", "eval_image_size", "crop_pct", "eval_crop_pct", "interpolation", "mean", "std")
    return {k: _plain(cfg.data.get(k)) for k in keys if cfg.data.get(k) is not None}


def task_of(cfg: DictConfig) -> str:
    return check_task(cfg.get("task") or "classification")


def build_task_backbone(cfg: DictConfig):
    """The configured backbone: the pooled trunk, or for detection the ``features_only`` maps."""
    if task_of(cfg) == "detection":
        strides = _plain(cfg.head.get("feature_strides")) or DEFAULT_STRIDES
        return build_feature_backbone(_plain(cfg.model), strides)
    return build_backbone(_plain(cfg.model))


def build_module(cfg: DictConfig, splits: DatasetSplits, backbone=None) -> TransferModule:
    if task_of(cfg) == "detection":
        return TransferModule(
            backbone=backbone,
            task="detection",
            class_names=list(splits.class_names),
            category_ids=list(splits.category_ids),
            model=_plain(cfg.model),
            head=_plain(cfg.head),
            optim=devices.split_lr_scaling(_plain(cfg.optim))[0],
            scheduler=_plain(cfg.get("scheduler")),
            data={k: _plain(cfg.data[k]) for k in ("image_size", "mean", "std") if cfg.data.get(k)},
        )
    return TransferModule(
        backbone=backbone,
        class_names=list(splits.class_names),
        model=_plain(cfg.model),
        head=_plain(cfg.get("head")) or {},
        optim=devices.split_lr_scaling(_plain(cfg.optim))[0],
        scheduler=_plain(cfg.get("scheduler")),
        data=data_overrides(cfg),
        multi_label=splits.multi_label,
    )


def num_workers(cfg: DictConfig) -> int:
    if cfg.data.get("num_workers") is not None:
        return int(cfg.data.num_workers)
    return devices.default_num_workers(cfg.trainer.get("devices"))


def build_datamodule(cfg: DictConfig, splits: DatasetSplits, module: TransferModule):
    on_gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto")
    if module.task == "detection":
        return DetectionDataModule(
            splits,
            image_size=module.image_size,
            mean=module.data_config["eval"]["mean"],
            batch_size=int(cfg.data.batch_size),
            num_workers=num_workers(cfg),
            augment=_plain(cfg.data.get("augment")),
            pin_memory=on_gpu,
        )
    return ClassificationDataModule(
        splits,
        train_cfg=module.data_config["train"],
        eval_cfg=module.data_config["eval"],
        batch_size=int(cfg.data.batch_size),
        num_workers=num_workers(cfg),
        augment=_plain(cfg.data.get("augment")),
        pin_memory=on_gpu,
        draft_factor=_plain(cfg.data.get("draft_factor", DRAFT_FACTOR)),
        mixup=_plain(cfg.data.get("mixup")),
    )


def build_trainer(cfg: DictConfig, run_dir: Path, *, extra_callbacks=()) -> L.Trainer:
    ckpt_cfg = _plain(cfg.get("checkpoint")) or {}
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if v is not None]
    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor=ckpt_cfg.get("monitor", "val/acc1"),
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
        **devices.trainer_kwargs(_plain(cfg.trainer), _plain(cfg.get("strategy"))),
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
    return [EMA(**{k: v for k, v in _plain(ema).items() if k != "enabled"})]


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    if is_rank_zero():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def resolve_ckpt(cfg: DictConfig, *, required: bool) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        runs_root = (cfg.get("checkpoint") or {}).get("runs_root") or "outputs"
        found = find_last_checkpoint(runs_root, exclude=Path(cfg.run_dir))
        log.info("ckpt_path=last: %s", found)
        return str(found)
    if ckpt is None:
        if required:
            raise ValueError(
                f"mode={cfg.mode} needs a trained checkpoint: pass ckpt_path=PATH/TO/last.ckpt "
                "(written by mode=train into <run dir>/checkpoints/)."
            )
        return None
    if not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt!r} does not exist. Pass the path of a checkpoint written by a training run, "
            "e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt."
        )
    return str(ckpt)


# -------------------------------------------------------------------- modes
def train(cfg: DictConfig, *, callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Fine-tune, keep best + last checkpoints, export the best weights, write ``summary.json``.

    Args:
        cfg: the composed config.
        callbacks: extra Lightning callbacks for this run.
    """
    ckpt = resolve_ckpt(cfg, required=False)
    cfg, ckpt = continue_requeued_job(cfg, ckpt)
    export_formats(cfg)  # a bad export.format fails now, not after training
    run_dir = prepare_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    backbone = build_task_backbone(cfg)  # weights problems surface before the data scan
    splits = build_splits(cfg)
    module = apply_speed_switches(build_module(cfg, splits, backbone), cfg.model)
    datamodule = build_datamodule(cfg, splits, module)
    if cfg.data.get("cache_features"):
        datamodule = enable_feature_cache(
            module, datamodule, augment=_plain(cfg.data.get("augment")), finetune=_plain(cfg.get("finetune"))
        )
    meter = ThroughputMeter()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[meter, *callbacks])
    plan = devices.batch_plan(trainer, per_device=int(cfg.data.batch_size), optim=_plain(cfg.optim))
    module.hparams.optim["lr"] = plan["lr"]
    start = time.perf_counter()
    try:
        with distributed.hydra_ddp_launch():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except SIGTERMException:
        _stopped_by_sigterm(trainer, run_dir, time.perf_counter() - start)
    wall = time.perf_counter() - start
    metrics = _scalars(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path or None
    summary = {
        "mode": "train",
        "model": cfg.model.name,
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "skipped_images": len(splits.skipped),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "precision": str(trainer.precision),
        "batch": plan,
        "wall_time_s": round(wall, 2),
        "train_images_per_s": meter.images_per_s,
        "metrics": metrics,
        "best_checkpoint": best,
        "best_score": float(trainer.checkpoint_callback.best_model_score)
        if trainer.checkpoint_callback.best_model_score is not None
        else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    if isinstance(datamodule, CachedFeatureDataModule):
        summary["feature_extraction_s"] = round(sum(datamodule.extract_seconds.values()), 2)
    if module.task == "detection":
        summary.update(
            category_ids=splits.category_ids,
            clipped_boxes=splits.clipped_boxes,
            dropped_boxes=splits.dropped_boxes,
        )
    if trainer.is_global_zero:
        export_module = load_module(best) if best else module
        summary.update(_export_formats(cfg, export_module, run_dir / "export", checkpoint=best))
    write_summary(run_dir, summary)
    if is_rank_zero():
        log.info("Run directory: %s", run_dir)
    return summary


def _stopped_by_sigterm(trainer: L.Trainer, run_dir: Path, wall: float) -> None:
    """After SIGTERM: record where to resume, then exit with status 143 (no traceback, no export)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    summary = {
        "mode": "train",
        "stopped_by": "SIGTERM",
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(wall, 2),
        "resume_checkpoint": str(last) if last.is_file() else None,
    }
    write_summary(run_dir, summary)
    if is_rank_zero():
        print(
            f"b4transfer: stopped by SIGTERM at step {trainer.global_step}; resume with ckpt_path={last}",
            file=sys.stderr,
        )
    raise SystemExit(SIGTERM_EXIT_CODE)


def _export(module: TransferModule, out_dir: Path, *, checkpoint: str | None) -> Path:
    if module.task == "detection":
        from b4transfer.export_detection import export_detector

        return export_detector(module, out_dir, extra={"checkpoint": checkpoint})
    return export_timm(
        backbone=module.backbone,
        head_fc=module.head.fc,
        model_name=module.hparams.model["name"],
        class_names=module.class_names,
        data_config=module.data_config,
        out_dir=out_dir,
        multi_label=module.head.multi_label,
        extra={"checkpoint": checkpoint},
    )


def export_formats(cfg: DictConfig) -> list[str]:
    """The checked ``export.format`` list (a name or a list of names); ``onnx`` needs onnx + onnxruntime."""
    value = _plain((cfg.get("export") or {}).get("format", "timm"))
    formats = [value] if isinstance(value, str) else list(value or [])
    if not formats or any(f not in EXPORT_FORMATS for f in formats):
        raise ValueError(
            f"export.format={value!r} is not supported; use one of {', '.join(EXPORT_FORMATS)}, or a list "
            "such as export.format=[timm,onnx]."
        )
    if "onnx" in formats:
        from b4transfer.onnx_export import _require_onnx

        _require_onnx()
    return formats


def _export_formats(cfg: DictConfig, module: TransferModule, out_dir: Path, *, checkpoint) -> dict[str, Any]:
    """Export in every ``export.format``; returns the summary entries (``export_dir``, ``onnx``)."""
    out: dict[str, Any] = {"export_dir": str(out_dir)}
    for fmt in export_formats(cfg):
        if fmt == "timm":
            _export(module, out_dir, checkpoint=checkpoint)
        else:
            from b4transfer.onnx_export import export_onnx

            out["onnx"] = export_onnx(
                backbone=module.backbone,
                head_fc=module.head.fc,
                class_names=module.class_names,
                data_config=module.data_config,
                out_dir=out_dir,
                multi_label=module.head.multi_label,
                opset=int((cfg.get("export") or {}).get("onnx_opset", 17)),
            )
    return out


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``mode=validate`` / ``mode=test``: metrics of a checkpoint on the configured data."""
    ckpt = resolve_ckpt(cfg, required=True)
    run_dir = prepare_run_dir(cfg)
    module = load_module(ckpt)
    splits = build_splits(cfg)
    if list(splits.class_names) != module.class_names:
        raise ValueError(
            f"The data's classes {splits.class_names} differ from the checkpoint's {module.class_names} "
            f"({ckpt}). Evaluate on data with the same class folders/labels."
        )
    datamodule = build_datamodule(cfg, splits, module)
    trainer = build_trainer(cfg, run_dir)
    fn = trainer.validate if cfg.mode == "validate" else trainer.test
    results = fn(module, datamodule=datamodule)
    summary = {"mode": cfg.mode, "checkpoint": ckpt, "metrics": _scalars(results[0] if results else {})}
    write_summary(run_dir, summary)
    return summary


def export(cfg: DictConfig) -> dict[str, Any]:
    """``mode=export ckpt_path=...``: timm-loadable ``export/model.safetensors`` + ``config.json``."""
    ckpt = resolve_ckpt(cfg, required=True)
    export_formats(cfg)
    run_dir = prepare_run_dir(cfg)
    summary = {"mode": "export", "checkpoint": ckpt}
    summary.update(_export_formats(cfg, load_module(ckpt), run_dir / "export", checkpoint=ckpt))
    write_summary(run_dir, summary)
    return summary
