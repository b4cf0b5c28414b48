"""Classification exports: ``timm`` (``model.safetensors`` + ``config.json`` that plain timm loads, see
:mod:`b4transfer.export.timm_format`) and ``onnx`` (``model.onnx`` checked with onnxruntime, see
:mod:`b4transfer.tasks.classification.onnx_export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from b4transfer.export.timm_format import export_timm


def export_classifier_timm(module, out_dir: Path, *, checkpoint: str | None) -> dict[str, Any]:
    """``export.format=timm``: the timm classifier with the head as its own classifier."""
    export_timm(
        backbone=module.backbone,
        head_fc=module.head.fc,
        model_name=module.hparams.model["name"],
        class_names=module.class_names,
        data_config=module.data_config,
        out_dir=out_dir,
        multi_label=module.head.multi_label,
        extra={"checkpoint": checkpoint, "calibration": module.hparams.get("calibration")},
        weights_origin=module.hparams.get("weights_origin"),
    )
    return {}


def export_classifier_onnx(module, out_dir: Path, *, opset: int) -> dict[str, Any]:
    """``export.format=onnx``: ``model.onnx`` (image -> logits), checked against PyTorch."""
    from b4transfer.tasks.classification.onnx_export import export_onnx

    report = export_onnx(
        backbone=module.backbone,
        head_fc=module.head.fc,
        class_names=module.class_names,
        data_config=module.data_config,
        out_dir=out_dir,
        multi_label=module.head.multi_label,
        opset=opset,
        calibration=module.hparams.get("calibration"),
    )
    return {"onnx": report}
