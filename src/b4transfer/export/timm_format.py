"""Export a fine-tuned backbone + linear head as plain timm weights, and load them back.

``export_timm`` writes ``model.safetensors`` (the full timm classifier state dict: the backbone's keys
plus the head as timm's own classifier, ``classifier.weight``/``classifier.bias`` for EfficientNets) and
``config.json`` in timm's hub format (``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``
holding the data config), so that plain timm rebuilds the model without b4transfer.

The trap this guards against: ``timm.create_model(name, pretrained=True, num_classes=K,
pretrained_cfg_overlay=dict(file=".../model.safetensors"))`` silently DROPS the exported classifier
whenever ``K`` differs from the registry's ``num_classes`` (1000): timm's ``load_pretrained`` assumes a
new head is wanted and leaves it randomly initialised. Put ``num_classes=K`` in the overlay too::

    model = timm.create_model(
        "efficientnet_b4", pretrained=True, num_classes=K,
        pretrained_cfg_overlay=dict(file="export/model.safetensors", num_classes=K),
    ).eval()

``timm.create_model("local-dir:export", pretrained=True)`` reads ``config.json`` and also works.
``load_exported`` does the former, carrying the exported data config and label names in
``model.pretrained_cfg``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from pathlib import Path

import timm
import torch
from timm.models import split_model_name_tag
from timm.models._hub import save_config_for_hf
from timm.models._pretrained import PretrainedCfg
from torch import nn

from b4transfer import __version__
from b4transfer.errors import UserError, UserTypeError
from b4transfer.export.artifacts import (  # noqa: F401 - atomic_write, claim_dir: also imported from here
    CONFIG_NAME,
    MARKER,
    WEIGHTS_NAME,
    atomic_write,
    claim_dir,
    export_files,
    write_export,
)

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "export_timm", "load_exported", "timm_classifier"]
_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_RESERVED = {"architecture", "num_classes", "num_features", "global_pool", "label_names",
             "label_descriptions", "model_args", "pretrained_cfg", MARKER, "multi_label"}


def export_timm(
    *,
    backbone: nn.Module,
    head_fc: nn.Linear,
    model_name: str,
    class_names: list[str],
    data_config: dict,
    out_dir: Path,
    multi_label: bool = False,
    extra: dict | None = None,
    weights_origin: dict | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` loadable by plain timm.

    Args:
        backbone: The classification trunk from ``create_backbone`` (``num_classes=0``).
        head_fc: The linear layer on the pooled features, ``(num_features -> len(class_names))``.
        model_name: timm name of the backbone, with or without tag (``efficientnet_b4.ra2_in1k``).
        class_names: Label of each output, in logit order; stored as timm's ``label_names``.
        data_config: Preprocessing: a timm data config (``input_size``, ``crop_pct``, ``mean``, ...;
            optionally ``test_input_size``/``test_crop_pct``), or ``{"train": cfg, "eval": cfg}`` as
            ``resolve_data_configs`` gives, stored as timm's train and test sizes/crops.
        out_dir: Export directory; created if needed. Files there that b4transfer did not write are never
            overwritten; an earlier b4transfer export there is replaced.
        multi_label: Whether outputs are independent sigmoids (stored as ``multi_label``).
        extra: More JSON-serialisable top-level entries for ``config.json`` (e.g. the checkpoint path).
        weights_origin: Where the fine-tuning started (:func:`b4transfer.backbone.origin.weights_origin`),
            stored as ``weights_origin``; ``pretrained_cfg.tag`` names the hub tag only when it was one
            (random init or a local file: no tag).

    Returns:
        ``out_dir``.

    Raises:
        TypeError: ``backbone`` is not a timm classification trunk or ``head_fc`` not an ``nn.Linear``.
        ValueError: Sizes, names or the data config disagree, or ``extra`` is not serialisable.
        FileExistsError: ``out_dir`` holds a ``model.safetensors``/``config.json`` b4transfer did not write.
    """
    arch = _check_model(backbone, head_fc, model_name, class_names)
    flat = flat_data_config(data_config)
    extras = check_extra(extra)
    model = timm_classifier(backbone, head_fc)
    state = _checked_state_dict(model, arch, len(class_names))
    model_config = {"label_names": list(class_names), MARKER: __version__, "multi_label": bool(multi_label),
                    **extras}
    if weights_origin is not None:
        model_config["weights_origin"] = dict(weights_origin)
        hub = weights_origin.get("source") == "hub"  # timm drops None values: no tag
        model.pretrained_cfg = {**model.pretrained_cfg, "tag": weights_origin.get("tag") if hub else None}
    return write_export(out_dir, state, write_config=lambda p: save_hf_config(model, p, model_config, flat))


def save_hf_config(model: nn.Module, path: Path, model_config: dict, data_config: dict) -> None:
    """timm's ``config.json`` for ``model``, its ``pretrained_cfg`` holding the export's preprocessing.

    timm 1.0.31 takes ``data_config`` itself; 1.0.9-1.0.30 have no such argument and copy the source
    checkpoint's preprocessing, so on those the same fields are set afterwards, as 1.0.31 sets them.
    """
    if "data_config" in inspect.signature(save_config_for_hf).parameters:
        save_config_for_hf(model, str(path), model_config=model_config, data_config=data_config)
        return
    save_config_for_hf(model, Path(path), model_config=model_config)  # 1.0.9-1.0.30: a Path
    config = json.loads(Path(path).read_text())
    cfg = config["pretrained_cfg"]
    cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()})
    for key in ("test_input_size", "test_crop_pct"):  # the eval half, when given, else none
        if data_config.get(key) is None:
            cfg.pop(key, None)
    cfg.pop("test_pool_size", None)
    if tuple(cfg["input_size"][1:]) != tuple(model.pretrained_cfg["input_size"][1:]):
        cfg["pool_size"] = None
    Path(path).write_text(json.dumps(config, indent=2))


def timm_classifier(backbone: nn.Module, head_fc: nn.Linear) -> nn.Module:
    """A CPU, eval-mode copy of ``backbone`` with ``head_fc`` as its own timm classifier."""
    model = copy.deepcopy(backbone).cpu().eval()
    model.reset_classifier(head_fc.out_features)
    classifier = model.get_submodule(_classifier_name(model))
    classifier.load_state_dict({k: v.detach().cpu() for k, v in head_fc.state_dict().items()})
    return model


def load_exported(out_dir: Path | str) -> nn.Module:
    """Rebuild an export with plain timm (the recipe in this module's docstring), in eval mode.

    Args:
        out_dir: Directory written by :func:`export_timm`.

    Returns:
        The timm classifier; ``model.pretrained_cfg`` holds the exported data config and label names.
    """
    config_path, weights = export_files(out_dir, "export_timm")
    try:
        config = json.loads(config_path.read_text())
        num_classes, arch = int(config["num_classes"]), config["architecture"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config_path} is not a timm config.json (no architecture/num_classes): {e}") from e
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    overlay = {k: tuple(v) if isinstance(v, list) else v
               for k, v in config.get("pretrained_cfg", {}).items() if k in fields}
    if config.get("label_names"):
        overlay["label_names"] = tuple(config["label_names"])
    # num_classes in the overlay too, else timm drops the exported head (see the module docstring)
    overlay.update(file=str(weights.resolve()), num_classes=num_classes)
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    model = timm.create_model(arch, pretrained=True, num_classes=num_classes,
                              pretrained_cfg_overlay=overlay, **model_args)
    return model.eval()


def _check_model(backbone: nn.Module, head_fc: nn.Linear, model_name: str, class_names: list[str]) -> str:
    cfg = getattr(backbone, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or getattr(backbone, "num_classes", None) != 0:
        raise TypeError(f"backbone ({type(backbone).__name__}) must be the timm classification trunk from "
                        "create_backbone(name, features_only=False), which has num_classes=0.")
    if not isinstance(head_fc, nn.Linear):
        raise UserTypeError(f"head_fc must be the head's nn.Linear, got {type(head_fc).__name__}.")
    names = list(class_names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise UserError(f"class_names must be distinct strings, one per output, got {class_names!r}.")
    if (head_fc.in_features, head_fc.out_features) != (backbone.num_features, len(names)):
        raise UserError(
            f"head_fc maps {head_fc.in_features} -> {head_fc.out_features}, but the backbone gives "
            f"{backbone.num_features} features and there are {len(names)} class_names."
        )
    arch = split_model_name_tag(model_name)[0]
    if arch != cfg.get("architecture", arch):
        raise UserError(f"model_name={model_name!r} does not match the backbone's architecture "
                         f"{cfg['architecture']!r}; pass the name the backbone was built with.")
    return arch


def flat_data_config(data_config: dict) -> dict:
    """One timm data config, the eval half (if given) as ``test_input_size``/``test_crop_pct``."""
    if not isinstance(data_config, dict):
        raise UserError(f"data_config must be a timm data config dict, got {type(data_config).__name__}.")
    if "train" in data_config or "eval" in data_config:
        train, evaluation = data_config.get("train"), data_config.get("eval")
        if not (isinstance(train, dict) and isinstance(evaluation, dict)):
            raise UserError("data_config with 'train'/'eval' needs both as timm data config dicts.")
        for key in ("interpolation", "mean", "std"):
            if tuple(_as_tuple(train.get(key))) != tuple(_as_tuple(evaluation.get(key))):
                raise UserError(f"data_config train/eval {key} differ ({train.get(key)!r} vs "
                                 f"{evaluation.get(key)!r}); timm's config.json holds one {key} for both.")
        flat = dict(train, test_input_size=evaluation.get("input_size"),
                    test_crop_pct=evaluation.get("crop_pct"))
    else:
        flat = dict(data_config)
    missing = [k for k in ("input_size", "mean", "std", "crop_pct", "interpolation") if flat.get(k) is None]
    if missing:
        raise UserError(f"data_config lacks {', '.join(missing)}; pass resolve_data_configs(...) output.")
    return {k: _as_tuple(v) for k, v in flat.items()
            if k in (*_DATA_KEYS, "test_input_size", "test_crop_pct") and v is not None}


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def check_extra(extra: dict | None) -> dict:
    extra = dict(extra or {})
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise UserError(f"extra keys {clash} would overwrite fields of config.json; rename them.")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise UserError(f"extra must be JSON-serialisable for config.json: {e}") from e
    return extra


def _classifier_name(model: nn.Module) -> str:
    name = model.pretrained_cfg.get("classifier")
    name = name[0] if isinstance(name, (list, tuple)) else name
    if not name:
        arch = model.pretrained_cfg.get("architecture")
        raise UserTypeError(f"{arch} names no classifier in its pretrained_cfg; it cannot be exported.")
    return name


def _checked_state_dict(model: nn.Module, arch: str, num_classes: int) -> dict[str, torch.Tensor]:
    """The state dict, checked key by key against a fresh plain-timm model (no silent partial loads)."""
    with torch.device("meta"):
        fresh = timm.create_model(arch, num_classes=num_classes).state_dict()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    for key, ref in fresh.items():  # e.g. FrozenBatchNorm2d keeps no batch counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=ref.dtype)
    missing = [k for k in fresh if k not in state]
    unexpected = [k for k in state if k not in fresh]
    shapes = [k for k in fresh if k in state and state[k].shape != fresh[k].shape]
    if missing or unexpected or shapes:
        raise UserError(
            f"The backbone's weights do not fit a fresh timm {arch!r} (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}); export the unwrapped timm model "
            "(no torch.compile / DDP wrapper) with standard BatchNorm layers."
        )
    return state
