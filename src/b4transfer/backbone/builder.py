"""Building the timm model: the one place that calls ``timm.create_model``, and the checks of its
arguments (model name and tag, drop rates, ``out_indices``)."""

from __future__ import annotations

import difflib
import numbers

import timm
import torch
from timm.models import get_pretrained_cfg, is_model, split_model_name_tag
from torch import nn

from b4transfer.errors import UserError

DEFAULT_NAME = "efficientnet_b4.ra2_in1k"


def build_model(name: str, kwargs: dict, **timm_kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **timm_kwargs, **kwargs)
    except IndexError as e:  # timm's feature wrapper indexes stages with out_indices
        with torch.device("meta"):
            stages = len(timm.create_model(name, num_classes=0).feature_info)
        raise UserError(
            f"model.out_indices={kwargs.get('out_indices')!r} is out of range: {name} has {stages} feature "
            f"stages, so use indices in 0..{stages - 1}, e.g. {tuple(range(1, stages))}."
        ) from e


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise UserError(f"model.name must be a timm model name such as {DEFAULT_NAME!r}, got {name!r}.")
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        close = list(dict.fromkeys(
            timm.list_models(f"*{arch}*")[:5] + difflib.get_close_matches(arch, timm.list_models(), n=5)
        ))
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UserError(
            f"model.name={name!r} is not a timm model.{hint} Any timm EfficientNet-family name works "
            "(efficientnet_b0 ... efficientnet_b8, tf_efficientnet_lite0, efficientnetv2_s, ...); "
            "list them with timm.list_models('*efficientnet*')."
        )
    if tag:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError:
            cfg = None
        if cfg is None:
            tags = timm.list_pretrained(f"{arch}.*")
            raise UserError(
                f"model.name={name!r}: {arch} has no pretrained tag {tag!r}. Use one of "
                f"{', '.join(tags) or arch}, or the bare architecture name {arch!r}."
            )


def check_rate(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise UserError(f"{key} must be a number in [0, 1), got {value!r}.")


def check_out_indices(out_indices) -> tuple[int, ...] | None:
    if out_indices is None:
        return None
    values = tuple(out_indices) if isinstance(out_indices, (list, tuple)) else None
    if not values or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in values):
        raise UserError(
            f"model.out_indices must be a non-empty sequence of stage indices such as (1, 2, 3, 4), "
            f"got {out_indices!r}."
        )
    return tuple(int(i) for i in values)
