"""Export a fine-tuned detector as plain weights + config, and load it back with no Lightning.

``export_detector`` writes ``model.safetensors`` — the state dict of the standalone torchvision detector
(``backbone.body.*`` the timm features, ``backbone.fpn.*``, then the detector's heads) — and
``config.json`` holding everything needed to rebuild it (timm name, strides, detector settings,
image size, mean/std, class names and source category ids). ``load_exported_detector`` rebuilds the
torchvision ``RetinaNet`` / ``FCOS`` / ``FasterRCNN`` from them, strictly (every key must fit)::

    detector, config = load_exported_detector("export")
    detections = detector([image])  # image: (3, H, W) float 0..1, any size; boxes in its pixels

The detector resizes the input so its longer side is ``config["image_size"]`` and maps the boxes back.
Labels: Faster R-CNN's class 0 is background, so ``label - config["label_offset"]`` indexes
``config["class_names"]`` (the offset is 0 for RetinaNet and FCOS).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from b4transfer.backbone import create_backbone
from b4transfer.data.loaders import fill_colour
from b4transfer.export.artifacts import ONNX_NAME, check_inputs, read_export, write_export
from b4transfer.export.timm_format import check_extra
from b4transfer.tasks.detection.data.datamodule import DetectionPathDataset
from b4transfer.tasks.detection.head import build_detector
from b4transfer.tasks.detection.module import DetectionModule
from b4transfer.tasks.detection.onnx_export import export_detector_onnx

__all__ = ["export_detector", "load_exported_detector", "with_fpn_width"]


def export_detector(module, out_dir: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` + ``out_dir/config.json`` for a ``DetectionModule``.

    Args:
        module: A :class:`~b4transfer.tasks.detection.module.DetectionModule`.
        out_dir: Export directory; files b4transfer did not write are never overwritten.
        extra: More JSON-serialisable top-level entries for ``config.json``.

    Returns:
        ``out_dir``.
    """
    if not isinstance(module, DetectionModule):
        raise TypeError(f"export_detector needs a DetectionModule, got {type(module).__name__}.")
    extras = check_extra(extra)
    return write_export(out_dir, detector_state(module), {**detector_config(module), **extras})


def detector_state(module: DetectionModule) -> dict:
    """The standalone torchvision detector's state dict (``backbone.body.*`` = the timm features)."""
    state = {f"backbone.body.{k}": v for k, v in module.backbone.state_dict().items()}
    state.update(module.head.detector.state_dict())
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def detector_config(module: DetectionModule) -> dict:
    """Everything needed to rebuild the standalone detector (the export's ``config.json``)."""
    hp = module.hparams
    head = dict(hp.head or {})
    return {
        "task": "detection",
        "architecture": hp.model["name"],
        "out_indices": list(module.backbone.feature_info.out_indices),
        "head": head,
        "image_size": module.image_size,
        "mean": list(module.data_config["eval"]["mean"]),
        "std": list(module.data_config["eval"]["std"]),
        "class_names": list(module.class_names),
        "category_ids": list(module.category_ids),
        "label_offset": module.head.label_offset,
        "weights_origin": hp.get("weights_origin"),  # where fine-tuning started: random, a file, a hub tag
    }


def standalone_detector(module: DetectionModule) -> nn.Module:
    """A CPU, eval-mode torchvision detector with ``module``'s weights (what the exports hold)."""
    return rebuild_detector(detector_config(module), detector_state(module))


def load_exported_detector(out_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild an exported detector (torchvision, eval mode) and return it with its ``config.json``.

    Args:
        out_dir: Directory written by :func:`export_detector`.

    Returns:
        ``(detector, config)``.
    """
    config, state = read_export(out_dir, writer="export_detector", refusal=_not_detection)
    return rebuild_detector(config, state), config


def _not_detection(config: dict, path: Path) -> str | None:
    if config.get("task") != "detection":
        return (
            f"{path} is not a detection export (task={config.get('task')!r}); for a classifier use "
            "b4transfer.export.timm_format.load_exported."
        )
    return None


def with_fpn_width(head: dict[str, Any] | None, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``head`` settings, with ``fpn_channels`` read from the weights ``state`` when they do not say it: a
    checkpoint or export of a module built in Python without it has the default of its day (256 before
    :func:`build_detector`'s default followed ``conf/task/detection.yaml``)."""
    head = dict(head or {})
    key = next((k for k in state if k.endswith("fpn.inner_blocks.0.0.weight")), None)
    if "fpn_channels" not in head and key is not None:
        head["fpn_channels"] = int(state[key].shape[0])
    return head


def rebuild_detector(config: dict, state: dict) -> nn.Module:
    """The torchvision detector described by an export ``config``, filled strictly from ``state``."""
    body = create_backbone(
        config["architecture"], pretrained=False, features_only=True, out_indices=tuple(config["out_indices"])
    )
    settings = {k: v for k, v in with_fpn_width(config["head"], state).items() if k != "feature_strides"}
    detector = build_detector(
        body,
        len(config["class_names"]),
        image_size=config["image_size"],
        image_mean=config["mean"],
        image_std=config["std"],
        own_body=True,
        **settings,
    )
    detector.load_state_dict(state, strict=True)
    return detector.eval()


def export_detection_onnx(
    module: DetectionModule,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    check_images: list[Path] | None = None,
) -> dict:
    """``export.format=onnx``: ``out_dir/model.onnx``, the whole detector (normalisation, NMS, ...), run
    with onnxruntime against PyTorch (:func:`~b4transfer.tasks.detection.onnx_check.check_detector_onnx`)
    on the first :data:`~b4transfer.export.artifacts.CHECK_IMAGES` of ``check_images``, letterboxed (after
    training: the validation images), else on seeded noise."""
    fill = fill_colour(module.data_config["eval"]["mean"])
    canvases = check_inputs(
        module.image_size, check_images, lambda paths: DetectionPathDataset(paths, module.image_size, fill)
    )
    return export_detector_onnx(
        standalone_detector(module),
        Path(out_dir) / ONNX_NAME,
        image_size=module.image_size,
        opset=opset,
        class_names=module.class_names,
        metadata={"category_ids": list(module.category_ids)},
        check_images=canvases,
        check_options={"min_score": 0.0, "min_boxes": 0},
    )
