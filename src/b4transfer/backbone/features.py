"""Feature maps described by timm's ``feature_info``: channels, strides, and the ``out_indices`` for
wanted strides."""

from __future__ import annotations

import numbers

import timm
import torch
from torch import nn

from b4transfer.backbone.builder import check_name
from b4transfer.errors import UserError, UserTypeError


def _feature_info(model: nn.Module):
    info = getattr(model, "feature_info", None)
    if not hasattr(info, "channels"):
        raise UserTypeError(
            f"{type(model).__name__} has no feature_info describing its outputs; build it with "
            "create_backbone(name, features_only=True)."
        )
    return info


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each map a ``features_only`` backbone returns (B4: 24, 32, 56, 160, 448)."""
    return list(_feature_info(model).channels())


def feature_reductions(model: nn.Module) -> list[int]:
    """Stride of each map a ``features_only`` backbone returns relative to the input (2 ... 32)."""
    return list(_feature_info(model).reduction())


def out_indices_for_strides(name: str, strides) -> tuple[int, ...]:
    """The ``out_indices`` of ``name``'s ``features_only`` maps at ``strides`` (B4: 8, 16, 32 -> 2, 3, 4).

    Reads timm's ``feature_info`` of a meta-device model (no weights are built).

    Args:
        name: timm model name.
        strides: Wanted reductions relative to the input, ascending, e.g. ``(8, 16, 32)``.

    Returns:
        The stage indices to pass as ``create_backbone(..., features_only=True, out_indices=...)``.
    """
    check_name(name)
    with torch.device("meta"):
        info = timm.create_model(name, num_classes=0).feature_info
    available = [int(f["reduction"]) for f in info]
    values = list(strides) if isinstance(strides, (list, tuple)) else []
    ok = values and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in values)
    if not ok or sorted(set(values)) != values or any(s not in available for s in values):
        raise UserError(
            f"head.feature_strides={strides!r}: {name} gives feature maps at strides {available}. "
            f"Fix: choose ascending strides among those, e.g. {available[-3:]}."
        )
    return tuple(available.index(s) for s in values)
