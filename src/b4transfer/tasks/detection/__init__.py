"""``task=detection``: backbone feature maps -> FPN -> torchvision RetinaNet / FCOS / Faster R-CNN."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from b4transfer.config import loader_settings, plain
from b4transfer.errors import NotSupportedError
from b4transfer.tasks.base import Task, build_backbone, onnx_opset
from b4transfer.tasks.detection.anchors import anchor_fit, box_sides, warn_if_unfit
from b4transfer.tasks.detection.audit import audit_detection
from b4transfer.tasks.detection.calibration import calibrate_detector
from b4transfer.tasks.detection.data.datamodule import DetectionDataModule
from b4transfer.tasks.detection.data.splits import DetectionSplits
from b4transfer.tasks.detection.errors import analyse_detector
from b4transfer.tasks.detection.export import export_detection_onnx, export_detector, with_fpn_width
from b4transfer.tasks.detection.head import map_backend
from b4transfer.tasks.detection.module import DEFAULT_STRIDES, DetectionModule
from b4transfer.tasks.detection.onnx_graph import onnx_export_refusal
from b4transfer.tasks.detection.parity import export_int8, export_openvino, score_detector
from b4transfer.tasks.detection.predict import write_detections
from b4transfer.tasks.detection.results import detect_images
from b4transfer.tasks.detection.runtime import ADAPTER as RUNTIME_ADAPTER
from b4transfer.tasks.detection.slicing import check_slice
from b4transfer.training.devices import split_lr_scaling

__all__ = ["TASK", "DetectionModule", "DetectionTask"]
log = logging.getLogger(__name__)


def classification_options(cfg: DictConfig) -> dict[str, Any]:
    """The options of classification a detection run refuses (``loss.*`` only comes with ``+loss.``)."""
    loss = cfg.get("loss") or {}
    return {
        "data.cache_features": cfg.data.get("cache_features") or None,
        "data.multi_label": cfg.data.get("multi_label") or None,
        "loss.name": loss.get("name") if loss.get("name") not in (None, "ce") else None,
        "loss.class_weights": plain(loss.get("class_weights")),
        "data.sampler": cfg.data.get("sampler"),
    }


class DetectionTask(Task):
    """Object detection: ``DetectionSplits`` data (COCO, YOLO, demo), ``val/map``, state-dict and ONNX
    exports."""

    name = "detection"
    splits_type = DetectionSplits
    data_hint = "data=coco, data=yolo or data=demo_detection"
    monitor = "val/map"
    module_class = DetectionModule
    modes = ("train", "validate", "test", "predict", "export", "lr_find", "audit")
    why_not = {  # issue 28
        "mode=distill": "a detector's outputs are boxes matched to anchors, not one class distribution per "
        "image or pixel for the soft-target loss; no detection distillation is measured here",
        "predict.explain=true": "per-box maps are not implemented",
    }
    export_formats = ("timm", "onnx", "openvino", "onnx_int8")
    steps = ("calibrate", "errors", "parity")  # score thresholds, AP chart + worst images, exports scored
    tta_modes = ("hflip", "hflip_scales")  # boxes of the views mapped back and merged (NMS + box voting)
    sliced_predict = True  # predict.slice: tiles detected one by one, merged in original pixels
    predict_outputs = ("draw", "draw_score_thresh", "coco_json")  # boxes drawn; a COCO JSON's image ids
    runtime_adapter = RUNTIME_ADAPTER  # predict.runtime: onnxruntime, openvino, onnx_int8

    def check_config(self, cfg: DictConfig) -> None:
        super().check_config(cfg)
        map_backend()  # every mode builds the mAP metric: without its package, refuse before any work
        formats = plain((cfg.get("export") or {}).get("format"))
        detector = (cfg.get("head") or {}).get("detector")
        if cfg.mode == "train" and "onnx" in ([formats] if isinstance(formats, str) else formats or []):
            reason = onnx_export_refusal(detector or "retinanet")
            if reason:
                raise NotSupportedError(f"head.detector={detector} cannot be exported to ONNX: {reason}")
        self.refuse_options(
            classification_options(cfg),
            "data.cache_features=false, data.multi_label=false, loss.name=ce, loss.class_weights=null and "
            "data.sampler=null (classification's options; the detector's own loss: retinanet's is already a "
            "focal loss).",
        )
        if cfg.mode == "predict":
            predict = cfg.get("predict") or {}
            check_slice(predict.get("slice"), predict.slice_overlap)

    def load_module(self, hparams: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> DetectionModule:
        head = with_fpn_width(hparams.get("head"), state_dict)
        return super().load_module({**hparams, "head": head}, state_dict)

    def build_backbone(self, cfg: DictConfig) -> torch.nn.Module:
        strides = plain(cfg.head.get("feature_strides")) or DEFAULT_STRIDES
        return build_backbone(plain(cfg.model), strides)

    def build_module(self, cfg: DictConfig, splits: DetectionSplits, backbone=None) -> DetectionModule:
        head = plain(cfg.head)
        if head.get("anchor_sizes") != "auto":
            return self._module(cfg, splits, backbone, head)
        # auto: the default anchors, or (when they miss > 10 % of the training boxes) the anchor check's
        # suggestion; the checkpoint records the sizes chosen, so it reloads without the data
        with torch.random.fork_rng():  # the probe draws no random numbers the real build would
            probe = self._module(cfg, splits, backbone, {**head, "anchor_sizes": None})
        fit = anchor_fit(box_sides(splits.train, probe.image_size), probe.head.anchor_sizes,
                         probe.head.detector_name)
        sizes = (fit or {}).get("suggested_anchor_sizes")
        if sizes:
            log.info("head.anchor_sizes=auto: %s (the default anchors scaled to the training boxes)", sizes)
        return self._module(cfg, splits, backbone, {**head, "anchor_sizes": sizes})

    def _module(self, cfg: DictConfig, splits: DetectionSplits, backbone, head: dict) -> DetectionModule:
        return DetectionModule(
            backbone=backbone,
            class_names=list(splits.class_names),
            category_ids=list(splits.category_ids),
            model=plain(cfg.model),
            head=head,
            optim=split_lr_scaling(plain(cfg.optim))[0],
            scheduler=plain(cfg.get("scheduler")),
            data=DetectionModule.data_settings(cfg.data),
        )

    def build_datamodule(self, cfg: DictConfig, splits: DetectionSplits, module: DetectionModule):
        size, mean = module.image_size, module.data_config["eval"]["mean"]
        datamodule = DetectionDataModule(splits, image_size=size, mean=mean, **loader_settings(cfg))
        sides = box_sides(splits.train, module.image_size)
        datamodule.anchor_fit = anchor_fit(sides, module.head.anchor_sizes, module.head.detector_name)
        warn_if_unfit(datamodule.anchor_fit)
        return datamodule

    def summary(self, splits: DetectionSplits, datamodule) -> dict[str, Any]:
        return {
            "category_ids": splits.category_ids,
            "clipped_boxes": splits.clipped_boxes,
            "dropped_boxes": splits.dropped_boxes,
            "anchor_fit": getattr(datamodule, "anchor_fit", None),
        }

    def audit(self, cfg: DictConfig, splits: DetectionSplits, run_dir: Path, *, full: bool) -> dict[str, Any]:
        module = self.build_module(cfg, splits) if full else None  # its anchors and image size
        return audit_detection(cfg, splits, run_dir, full=full, module=module)

    def calibrate(self, cfg: DictConfig, module, datamodule, run_dir: Path):
        default = float(cfg.predict.draw_score_thresh)
        return calibrate_detector(module, datamodule.val_dataloader(), default=default)

    def analyse_errors(self, cfg: DictConfig, module, datamodule, splits, run_dir: Path):
        default = float(cfg.predict.draw_score_thresh)
        top = int(cfg.errors.gallery)
        return analyse_detector(module, datamodule.val_dataloader(), run_dir, default=default, top=top)

    def score_export(self, fmt: str, module, out_dir: Path, *, cfg: DictConfig, splits, datamodule=None):
        if datamodule is None:  # mode=export export.parity=true: the configured data's validation split
            datamodule = self.build_datamodule(cfg, splits, module)
            datamodule.setup("validate")
        return score_detector(fmt, module, out_dir, datamodule.val_dataloader())

    def predict(self, cfg: DictConfig, module, paths: list[Path], run_dir: Path) -> dict[str, Any]:
        return write_detections(cfg, module, paths, run_dir)

    def predict_images(self, module, images: list, *, batch_size: int = 8) -> list:
        """The Python API's in-memory predictions for RGB PIL ``images`` (:mod:`.results`)."""
        return detect_images(module, images, batch_size=batch_size)

    def export(self, fmt: str, module, out_dir: Path, *, cfg: DictConfig, checkpoint, samples=None):
        opset = onnx_opset(cfg)
        images = [s.path for s in samples.val] if samples is not None else None
        if fmt == "onnx":
            return {"onnx": export_detection_onnx(module, out_dir, opset=opset, check_images=images)}
        if fmt == "openvino":
            return export_openvino(module, out_dir, opset=opset, check_images=images)
        if fmt == "onnx_int8":
            count = int(cfg.export.int8_calibration_images)
            calibration = [s.path for s in samples.train[:count]]
            return export_int8(module, out_dir, opset=opset, calibration=calibration, check_images=images)
        export_detector(module, out_dir, extra={"checkpoint": checkpoint})
        return {}


TASK = DetectionTask()
