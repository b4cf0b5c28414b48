"""``task=segmentation``: backbone feature maps -> semantic FPN (default) or U-Net decoder -> per-pixel
classes.

Data: ``data=seg_folder`` (images/ + masks/), ``data=voc_seg`` (Pascal VOC), ``data=coco`` (instance
polygons / RLE rendered to semantic masks, :mod:`b4transfer.tasks.segmentation.data.coco`), and the generated
``data=demo_segmentation`` (the default). Best checkpoint by ``val/miou``; predictions are palette mask
PNGs at each image's size; exports are weights + ``config.json`` (``export.format=timm``) and ONNX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer.config import loader_settings, plain
from b4transfer.tasks.base import Task, onnx_opset
from b4transfer.tasks.segmentation.data.datamodule import MaskDataModule
from b4transfer.tasks.segmentation.data.masks import MaskSplits
from b4transfer.tasks.segmentation.distill import SegmentationDistillation
from b4transfer.tasks.segmentation.export import export_segmenter, export_segmenter_onnx
from b4transfer.tasks.segmentation.head import check_head
from b4transfer.tasks.segmentation.losses import pixel_class_weights
from b4transfer.tasks.segmentation.module import SegmentationModule, build_feature_backbone
from b4transfer.tasks.segmentation.predict import write_masks
from b4transfer.tasks.segmentation.results import segment_images
from b4transfer.tasks.segmentation.runtime import ADAPTER as RUNTIME_ADAPTER
from b4transfer.training.class_weights import check_class_weights
from b4transfer.training.devices import split_lr_scaling

__all__ = ["TASK", "SegmentationModule", "SegmentationTask"]


def other_options(cfg: DictConfig) -> dict[str, Any]:
    """Options of other tasks a segmentation run refuses (focal loss, effective-number weights, the
    balanced sampler, feature caching, multi-label)."""
    loss = cfg.get("loss") or {}
    return {
        "loss.name": loss.get("name") if loss.get("name") not in (None, "ce") else None,
        "loss.class_weights": "effective" if loss.get("class_weights") == "effective" else None,
        "data.sampler": cfg.data.get("sampler"),
        "data.cache_features": cfg.data.get("cache_features") or None,
        "data.multi_label": cfg.data.get("multi_label") or None,
    }


class SegmentationTask(Task):
    """Semantic segmentation: ``MaskSplits`` data, ``val/miou``, weights + config.json and ONNX exports."""

    name = "segmentation"
    splits_type = MaskSplits
    data_hint = "data=seg_folder, data=voc_seg, data=coco or data=demo_segmentation"
    monitor = "val/miou"
    module_class = SegmentationModule
    modes = ("train", "validate", "test", "predict", "export", "lr_find", "distill")
    why_not = {  # issue 28
        "predict.explain=true": "its masks show where each class is; per-class maps are not implemented",
    }
    export_formats = ("timm", "onnx")
    tta_modes = ("hflip", "hflip_scales")
    predict_outputs = ("draw",)  # predict_overlays/: the masks blended over the images
    runtime_adapter = RUNTIME_ADAPTER  # predict.runtime: onnxruntime (its only exported runtime)

    def check_config(self, cfg: DictConfig) -> None:
        super().check_config(cfg)
        self.refuse_options(
            other_options(cfg),
            "loss.name=ce (+ loss.dice_weight), loss.class_weights=null|auto|[...], data.sampler=null, "
            "data.cache_features=false and data.multi_label=false.",
        )
        if cfg.mode in ("train", "lr_find"):  # other modes rebuild the head from the checkpoint
            check_head(plain(cfg.get("head")))
            check_class_weights((cfg.get("loss") or {}).get("class_weights"), ("auto",))

    def build_backbone(self, cfg: DictConfig) -> torch.nn.Module:
        return build_feature_backbone(plain(cfg.model), plain(cfg.get("head")))

    def build_module(self, cfg: DictConfig, splits: MaskSplits, backbone=None) -> SegmentationModule:
        loss = plain(cfg.get("loss")) or {}
        weights = pixel_class_weights(loss.get("class_weights"), splits.class_pixels, splits.class_names)
        return SegmentationModule(
            backbone=backbone,
            class_names=list(splits.class_names),
            model=plain(cfg.model),
            head=plain(cfg.get("head")),
            loss={"class_weights": weights, "dice_weight": float(loss.get("dice_weight") or 0.0)},
            optim=split_lr_scaling(plain(cfg.optim))[0],
            scheduler=plain(cfg.get("scheduler")),
            data=SegmentationModule.data_settings(cfg.data),
            ignore_index=splits.ignore_index,
            palette=[list(c) for c in splits.palette] if splits.palette else None,
        )

    def build_datamodule(self, cfg: DictConfig, splits: MaskSplits, module: SegmentationModule):
        mean = module.data_config["eval"]["mean"]
        return MaskDataModule(
            splits, image_size=module.image_size, mean=mean, resize=module.resize, **loader_settings(cfg)
        )

    def summary(self, splits: MaskSplits, datamodule) -> dict[str, Any]:
        pixels = splits.class_pixels  # of this run's training split (a k-fold fold's own)
        total = sum(pixels) or 1
        return {
            "ignore_index": splits.ignore_index,
            "binary_masks": splits.binary,  # 0/255 masks read as classes 0 and 1
            "class_pixel_share": {
                n: round(c / total, 4) for n, c in zip(splits.class_names, pixels)
            },
        }

    def distillation(self, teacher, settings) -> SegmentationDistillation:
        return SegmentationDistillation(teacher, settings)

    def predict(self, cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
        return write_masks(cfg, module, paths, run_dir)

    def predict_images(self, module, images: list, *, batch_size: int = 8) -> list:
        """The Python API's in-memory predictions for RGB PIL ``images`` (:mod:`.results`)."""
        return segment_images(module, images, batch_size=batch_size)

    def export(self, fmt: str, module, out_dir: Path, *, cfg: DictConfig, checkpoint, samples=None):
        if fmt == "onnx":
            opset = onnx_opset(cfg)
            images = [s.path for s in samples.val] if samples is not None else None
            return {"onnx": export_segmenter_onnx(module, out_dir, opset=opset, check_images=images)}
        export_segmenter(module, out_dir, extra={"checkpoint": checkpoint})
        return {}


TASK = SegmentationTask()
