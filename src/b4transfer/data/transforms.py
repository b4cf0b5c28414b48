"""Image transforms: thin wrappers over ``timm.data.create_transform``.

The model decides the input size, interpolation, mean/std and crop (its timm data
config, e.g. from ``timm.data.resolve_model_data_config``); the user decides the
augmentation, passed through as timm's own training keyword arguments.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.data import create_transform

from b4transfer.errors import UserError

# Keys of a timm data config that create_transform understands.
DATA_CFG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
DEFAULT_AUGMENT: dict[str, Any] = {"hflip": 0.5}
# Default JPEG draft factor: decode big photos at the smallest 1/2, 1/4, 1/8 scale whose short
# side still holds this many times the model's input side (see ``draft_size_for``).
DRAFT_FACTOR = 1.5
# Keys of create_transform that the data configs own, so `augment` may not set them (the schema's
# AugmentSettings.RESERVED refuses them at composition; this checks a module built in Python).
_RESERVED = {*DATA_CFG_KEYS, "is_training"}


def augment_options() -> list[str]:
    """Keyword arguments of ``timm.data.create_transform`` that ``augment`` may set."""
    params = inspect.signature(create_transform).parameters
    return sorted(name for name in params if name not in _RESERVED)


def _check_augment(augment: Mapping[str, Any]) -> dict[str, Any]:
    options = augment_options()
    unknown = sorted(set(augment) - set(options))
    if unknown:
        raise UserError(
            f"data.augment has unknown key(s) {unknown}. Fix: use timm.data.create_transform's "
            f"training arguments: {options} (input size, mean/std and crop come from the model)."
        )
    return dict(augment)


def _data_cfg(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    if "input_size" not in cfg:
        raise UserError(
            f"{name} has no 'input_size' (got keys {sorted(cfg)}). Fix: pass a timm data config, "
            "e.g. timm.data.resolve_model_data_config(model)."
        )
    return {key: cfg[key] for key in DATA_CFG_KEYS if key in cfg and cfg[key] is not None}


def build_transforms(
    *,
    train_cfg: Mapping[str, Any],
    eval_cfg: Mapping[str, Any],
    augment: Mapping[str, Any] | bool | None = None,
) -> tuple[Callable, Callable]:
    """Build the training and evaluation transforms (PIL image -> normalised tensor).

    Args:
        train_cfg: timm data config for training (``input_size``, ``interpolation``,
            ``mean``, ``std``, ...).
        eval_cfg: timm data config for evaluation (``crop_pct``, ``crop_mode`` matter).
        augment: timm training kwargs, e.g. ``scale``, ``hflip``, ``color_jitter``,
            ``auto_augment``, ``re_prob``; ``None``: timm's defaults with ``hflip=0.5``;
            ``False``: no augmentation, training images get the deterministic resize + centre
            crop of ``train_cfg`` (what a cached-feature linear probe needs).

    Returns:
        ``(train_transform, eval_transform)``.
    """
    if augment is False:
        train_tf = create_transform(**_data_cfg(train_cfg, "train_cfg"), is_training=False)
    else:
        if not isinstance(augment, (Mapping, type(None))):
            raise UserError(
                f"data.augment must be a mapping of timm create_transform options, null (defaults) or "
                f"false (no augmentation), got {augment!r}."
            )
        aug = _check_augment(DEFAULT_AUGMENT if augment is None else augment)
        train_tf = create_transform(**_data_cfg(train_cfg, "train_cfg"), is_training=True, **aug)
    eval_tf = create_transform(**_data_cfg(eval_cfg, "eval_cfg"), is_training=False)
    return train_tf, eval_tf


def uint8_eval_transform(eval_cfg: Mapping[str, Any]) -> Callable:
    """The evaluation transform up to the tensor: PIL image -> resized, cropped ``uint8`` ``(3, H, W)``.

    timm's own ``use_prefetcher`` form of the eval transform (the same resize and crop), without the
    float conversion and normalisation, which :func:`normalize_uint8` does on the batch where the model
    runs: 4x fewer bytes through the DataLoader's workers and the host-to-GPU copy, and
    ``normalize_uint8(t(img))`` equals the float transform's output exactly (the same operations).
    """
    return create_transform(**_data_cfg(eval_cfg, "eval_cfg"), is_training=False, use_prefetcher=True)


def normalize_uint8(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``uint8`` images ``(..., 3, H, W)`` -> normalised float32, as ``ToTensor`` + ``Normalize`` compute it
    (``x / 255``, then ``(x - mean) / std``); float images pass through unchanged."""
    if x.dtype != torch.uint8:
        return x
    shape = (-1, 1, 1)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return x.float().div_(255).sub_(mean).div_(std)


def draft_size_for(cfg: Mapping[str, Any], factor: float | None = DRAFT_FACTOR) -> tuple[int, int] | None:
    """JPEG draft-decoding size for a data config: ``factor`` times its largest input side, square.

    PIL then decodes a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) whose size is still at least
    this, so a 2 MP photo (1632x1224) for 320 px training decodes at 816x612: ~1.9x the input side,
    enough detail for random-resized crops, and several times less work for the resize that follows
    (measured in BENCHMARKS.md, input pipeline).

    Args:
        cfg: timm data config with ``input_size`` as ``(C, H, W)``, ``(H, W)`` or an int.
        factor: Decoded short side >= ``factor`` x input side; ``None``: no draft (full-size decode).

    Returns:
        ``(width, height)`` for :func:`b4transfer.data.images.load_rgb`, or ``None``.
    """
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise UserError(
            f"data.draft_factor must be a number >= 1 (decoded JPEG side / model input side), or null to "
            f"decode at full size, got {factor!r}."
        )
    size = cfg["input_size"]
    side = max(size[-2:]) if isinstance(size, (tuple, list)) else int(size)
    side = math.ceil(factor * side)
    return side, side
