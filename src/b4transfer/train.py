"""Entry points behind the CLI: ``run(cfg)`` dispatches on ``cfg.mode``.

``train(cfg) -> metrics`` is pure (no Hydra needed): tests call it with a composed config.
Every mode writes into ``cfg.run_dir`` (Hydra's run directory when called from the CLI).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from b4transfer.callbacks import ThroughputMeter
from b4transfer.data.datamodule import ClassificationDataModule
from b4transfer.data.splits import DatasetSplits
from b4transfer.ema import EMA
from b4transfer.export import export_timm
from b4transfer.module import TransferModule, build_backbone, load_module

log = logging.getLogger(__name__)

MODES = ("train", "validate", "test", "predict", "embed", "export", "lr_find")
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
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


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


def build_module(cfg: DictConfig, splits: DatasetSplits, backbone=None) -> TransferModule:
    return TransferModule(
        backbone=backbone,
        class_names=list(splits.class_names),
        model=_plain(cfg.model),
        head=_plain(cfg.get("head")) or {},
        optim=_plain(cfg.optim),
        scheduler=_plain(cfg.get("scheduler")),
        data=data_overrides(cfg),
        multi_label=splits.multi_label,
    )


def num_workers(cfg: DictConfig) -> int:
    if cfg.data.get("num_workers") is not None:
        return int(cfg.data.num_workers)
    return min(8, max(0, (os.cpu_count() or 1) - 1))


def build_datamodule(cfg: DictConfig, splits: DatasetSplits, module: TransferModule):
    on_gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto")
    return ClassificationDataModule(
        splits,
        train_cfg=module.data_config["train"],
        eval_cfg=module.data_config["eval"],
        batch_size=int(cfg.data.batch_size),
        num_workers=num_workers(cfg),
        augment=_plain(cfg.data.get("augment")),
        pin_memory=on_gpu,
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
            every_n_train_steps=ckpt_cfg.get("every_n_train_steps"),
        ),
        *([instantiate(cfg.finetune)] if cfg.get("finetune") else []),  # before the LR monitor: it sets LRs
        *([LearningRateMonitor(logging_interval="step")] if loggers else []),  # it fails without a logger
        *ema_callbacks(cfg.get("ema")),
        *[instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c],  # +callbacks.NAME._target_=
        *extra_callbacks,
    ]
    return L.Trainer(
        **_plain(cfg.trainer), default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False
    )


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
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune, keep best + last checkpoints, export the best weights, write ``summary.json``."""
    ckpt = resolve_ckpt(cfg, required=False)
    run_dir = prepare_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    backbone = build_backbone(_plain(cfg.model))  # weights problems surface before the data scan
    splits = build_splits(cfg)
    module = build_module(cfg, splits, backbone)
    datamodule = build_datamodule(cfg, splits, module)
    meter = ThroughputMeter()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[meter])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
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
        "wall_time_s": round(wall, 2),
        "train_images_per_s": meter.images_per_s,
        "metrics": metrics,
        "best_checkpoint": best,
        "best_score": float(trainer.checkpoint_callback.best_model_score)
        if trainer.checkpoint_callback.best_model_score is not None
        else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    if trainer.is_global_zero:
        export_module = load_module(best) if best else module
        summary["export_dir"] = str(_export(export_module, run_dir / "export", checkpoint=best))
    write_summary(run_dir, summary)
    log.info("Run directory: %s", run_dir)
    return summary


def _export(module: TransferModule, out_dir: Path, *, checkpoint: str | None) -> Path:
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
    run_dir = prepare_run_dir(cfg)
    out = _export(load_module(ckpt), run_dir / "export", checkpoint=ckpt)
    summary = {"mode": "export", "checkpoint": ckpt, "export_dir": str(out)}
    write_summary(run_dir, summary)
    return summary
