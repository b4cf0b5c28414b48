"""``task=classification``: pooled backbone features -> dropout -> linear; single- or multi-label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer.config import loader_settings, plain
from b4transfer.data.splits import DatasetSplits, class_counts
from b4transfer.data.transforms import DRAFT_FACTOR
from b4transfer.errors import UserError
from b4transfer.tasks.base import MODES, Task, onnx_opset
from b4transfer.tasks.classification.audit import audit_classification
from b4transfer.tasks.classification.calibration import calibrate_classifier
from b4transfer.tasks.classification.card import write_card
from b4transfer.tasks.classification.data.datamodule import ClassificationDataModule
from b4transfer.tasks.classification.distill import ClassificationDistillation
from b4transfer.tasks.classification.errors import analyse_classifier
from b4transfer.tasks.classification.explain import check_explainable, explain_predictions, explain_settings
from b4transfer.tasks.classification.export import export_classifier_onnx, export_classifier_timm
from b4transfer.tasks.classification.feature_cache import (
    CachedFeatureDataModule,
    check_cacheable,
    enable_feature_cache,
)
from b4transfer.tasks.classification.from_export import load_classifier_export
from b4transfer.tasks.classification.losses import WEIGHTINGS, class_weights
from b4transfer.tasks.classification.module import ClassificationModule, build_backbone
from b4transfer.tasks.classification.parity import export_int8, export_openvino, score_classifier
from b4transfer.tasks.classification.predict import write_embeddings, write_predictions
from b4transfer.tasks.classification.results import classify_images
from b4transfer.tasks.classification.runtime import ADAPTER as RUNTIME_ADAPTER
from b4transfer.training.class_weights import check_class_weights
from b4transfer.training.devices import split_lr_scaling

__all__ = ["TASK", "ClassificationModule", "ClassificationTask"]

def resolve_loss(cfg: DictConfig, splits: DatasetSplits) -> dict[str, Any]:
    """``cfg.loss`` with ``class_weights`` resolved from the training split's class counts."""
    loss = plain(cfg.get("loss")) or {}
    spec = loss.get("class_weights")
    counts = class_counts(splits.train, splits.num_classes) if spec is not None else []
    weights = class_weights(spec, counts, splits.class_names)
    name, gamma = loss.get("name") or "ce", float(loss.get("gamma", 2.0))
    return {"name": name, "gamma": gamma, "class_weights": weights}


def class_balance(splits: DatasetSplits, datamodule) -> dict[str, Any]:
    """The summary's report of the class counts and what was done about imbalance."""
    module = datamodule.trainer.lightning_module if datamodule.trainer else None
    loss = dict((module.hparams.get("loss") if module else None) or {"name": "ce"})
    if loss.get("name") != "focal":
        loss.pop("gamma", None)
    weights = loss.pop("class_weights", None)
    return {
        "class_counts": dict(zip(splits.class_names, class_counts(splits.train, splits.num_classes))),
        "loss": loss,
        "class_weights": dict(zip(splits.class_names, weights)) if weights else None,
        "sampler": getattr(datamodule, "sampler", None),
    }


def _device(cfg: DictConfig) -> str:
    """Where the post-training steps run: the GPU when training used one."""
    on_gpu = torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto")
    return "cuda" if on_gpu else "cpu"


class ClassificationTask(Task):
    """Image classification: ``DatasetSplits`` data, ``val/acc1``, timm and ONNX exports, every mode."""

    name = "classification"
    splits_type = DatasetSplits
    data_hint = "data=folder, data=csv or data=demo"
    monitor = "val/acc1"
    module_class = ClassificationModule
    modes = MODES
    export_formats = ("timm", "onnx", "openvino", "onnx_int8")
    tta_modes = ("hflip", "hflip_scales")  # probabilities averaged over the views
    explains = True  # predict.explain=true: class activation maps (explain.py)
    steps = ("calibrate", "errors", "parity", "card")  # on validation after training; export/README.md
    runtime_adapter = RUNTIME_ADAPTER  # predict.runtime: onnxruntime, openvino, onnx_int8

    def check_config(self, cfg: DictConfig) -> None:
        super().check_config(cfg)
        if cfg.mode == "predict":
            explain_settings(cfg.get("predict"))
        if cfg.mode in ("train", "lr_find"):
            check_class_weights((cfg.get("loss") or {}).get("class_weights"), WEIGHTINGS)
        if cfg.mode == "train" and cfg.data.get("cache_features"):
            check_cacheable(augment=plain(cfg.data.get("augment")), finetune=plain(cfg.get("finetune")))
            if cfg.data.get("sampler"):
                raise UserError(
                    f"data.sampler={cfg.data.sampler} does not combine with data.cache_features=true (the "
                    "cached features are served in their own order); use loss.class_weights=auto instead."
                )

    def build_backbone(self, cfg: DictConfig) -> torch.nn.Module:
        return build_backbone(plain(cfg.model))

    def build_module(self, cfg: DictConfig, splits: DatasetSplits, backbone=None) -> ClassificationModule:
        return ClassificationModule(
            backbone=backbone,
            class_names=list(splits.class_names),
            model=plain(cfg.model),
            head=plain(cfg.get("head")) or {},
            loss=resolve_loss(cfg, splits),
            optim=split_lr_scaling(plain(cfg.optim))[0],
            scheduler=plain(cfg.get("scheduler")),
            data=ClassificationModule.data_settings(cfg.data),
            multi_label=splits.multi_label,
        )

    def build_datamodule(self, cfg: DictConfig, splits: DatasetSplits, module: ClassificationModule):
        images = ClassificationDataModule(
            splits,
            train_cfg=module.data_config["train"],
            eval_cfg=module.data_config["eval"],
            **loader_settings(cfg),
            draft_factor=plain(cfg.data.get("draft_factor", DRAFT_FACTOR)),
            mixup=plain(cfg.data.get("mixup")),
            sampler=cfg.data.get("sampler"),
            seed=int(cfg.get("seed") or 0),
        )
        if cfg.mode == "train" and cfg.data.get("cache_features"):
            augment, finetune = plain(cfg.data.get("augment")), plain(cfg.get("finetune"))
            return enable_feature_cache(module, images, augment=augment, finetune=finetune)
        return images

    def summary(self, splits: DatasetSplits, datamodule) -> dict[str, Any]:
        out = {"class_balance": class_balance(splits, datamodule)}
        if isinstance(datamodule, CachedFeatureDataModule):
            out["feature_extraction_s"] = round(sum(datamodule.extract_seconds.values()), 2)
        return out

    def audit(self, cfg: DictConfig, splits: DatasetSplits, run_dir: Path, *, full: bool) -> dict[str, Any]:
        return audit_classification(cfg, splits, run_dir, full=full)

    def calibrate(self, cfg: DictConfig, module, datamodule, run_dir: Path):
        bins = int((cfg.get("calibrate") or {}).get("bins", 15))
        loader = datamodule.val_dataloader()
        return calibrate_classifier(module, loader, run_dir, bins=bins, device=_device(cfg))

    def analyse_errors(self, cfg: DictConfig, module, datamodule, splits: DatasetSplits, run_dir: Path):
        top = int(cfg.errors.gallery)
        loader = datamodule.val_dataloader()
        explain = explain_settings({**(plain(cfg.get("predict")) or {}), "explain": True})  # maps on
        return analyse_classifier(
            module, loader, splits.val, run_dir, top=top, device=_device(cfg), explain=explain
        )

    def distillation(self, teacher, settings) -> ClassificationDistillation:
        return ClassificationDistillation(teacher, settings)

    def predict(self, cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
        explain = explain_settings(cfg.get("predict"))
        if explain:  # a backbone without such a map is refused before predicting
            check_explainable(module, explain["stride"])
        out = write_predictions(cfg, module, paths, run_dir)
        if explain:
            out["explain"] = explain_predictions(cfg, module, paths, run_dir, device=_device(cfg))
        return out

    def embed(self, cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
        if module is None:  # the configured backbone itself (model.pretrained / model.weights)
            model, data = plain(cfg.model), ClassificationModule.data_settings(cfg.data)
            module = ClassificationModule(class_names=["_0", "_1"], model=model, data=data)
        return write_embeddings(cfg, module, paths, run_dir)

    def export(self, fmt: str, module, out_dir: Path, *, cfg: DictConfig, checkpoint, samples=None):
        if fmt == "timm":
            return export_classifier_timm(module, out_dir, checkpoint=checkpoint)
        opset = onnx_opset(cfg)
        if fmt == "openvino":
            return export_openvino(module, out_dir, opset=opset)
        if fmt == "onnx_int8":
            images = [s.path for s in samples.train[: int(cfg.export.int8_calibration_images)]]
            return export_int8(module, out_dir, opset=opset, calibration=images)
        return export_classifier_onnx(module, out_dir, opset=opset)

    def load_export(self, folder: Path):
        """The module of a timm export in ``folder`` without its checkpoint (``None``: not one)."""
        return load_classifier_export(folder)

    def predict_images(self, module, images: list, *, batch_size: int = 8) -> list:
        """The Python API's in-memory predictions for RGB PIL ``images`` (:mod:`.results`)."""
        return classify_images(module, images, batch_size=batch_size)

    def model_card(self, cfg: DictConfig, module, out_dir: Path, summary: dict) -> dict[str, Any]:
        return write_card(cfg, module, out_dir, summary)

    def score_export(self, fmt: str, module, out_dir: Path, *, cfg: DictConfig, splits, datamodule=None):
        return score_classifier(fmt, module, out_dir, splits, batch_size=int(cfg.data.batch_size))


TASK = ClassificationTask()
