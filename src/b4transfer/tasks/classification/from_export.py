"""A classifier rebuilt from its timm export alone (``model.safetensors`` + ``config.json``), for
``b4.load(export_dir)`` when the checkpoint it came from is not at hand (an export copied elsewhere, or
downloaded from the Hub): the same backbone, head, preprocessing, label names and calibration."""

from __future__ import annotations

import json
from pathlib import Path

from b4transfer.export.timm_format import CONFIG_NAME, MARKER, load_exported
from b4transfer.tasks.classification.module import ClassificationModule

__all__ = ["load_classifier_export"]


def _data_overrides(pretrained_cfg: dict) -> dict:
    """The ``data.*`` settings that reproduce the export's train and eval preprocessing."""
    test_size = pretrained_cfg.get("test_input_size") or pretrained_cfg["input_size"]
    return {
        "image_size": int(pretrained_cfg["input_size"][-1]),
        "eval_image_size": int(test_size[-1]),
        "crop_pct": float(pretrained_cfg["crop_pct"]),
        "eval_crop_pct": float(pretrained_cfg.get("test_crop_pct") or pretrained_cfg["crop_pct"]),
        "interpolation": pretrained_cfg["interpolation"],
        "mean": list(pretrained_cfg["mean"]),
        "std": list(pretrained_cfg["std"]),
    }


def load_classifier_export(folder: str | Path) -> ClassificationModule | None:
    """The :class:`ClassificationModule` of a b4transfer timm export in ``folder`` (eval mode), or ``None``
    when ``folder`` holds no such export."""
    try:
        config = json.loads((Path(folder) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    ours = MARKER in config and "task" not in config  # the other tasks' exports name their task
    if not ours or not config.get("num_classes") or "label_names" not in config:
        return None  # not ours, another task's export, or a backbone folder (num_classes 0)
    module = ClassificationModule(
        class_names=list(config["label_names"]),
        model={"name": config["architecture"], "pretrained": False, "weights": None},
        data=_data_overrides(config["pretrained_cfg"]),
        multi_label=bool(config.get("multi_label")),
        calibration=config.get("calibration"),
    )
    timm_model = load_exported(folder)
    state = timm_model.state_dict()
    module.backbone.load_state_dict({k: state[k] for k in module.backbone.state_dict()})
    classifier = timm_model.pretrained_cfg["classifier"]
    module.head.fc.load_state_dict({p: state[f"{classifier}.{p}"] for p in ("weight", "bias")})
    module.hparams["weights_origin"] = config.get("weights_origin")
    return module.eval()
