"""Speed switches applied to a built module: ``model.channels_last``, ``model.compile`` and fp32
depthwise convolutions under bf16 autocast on CPUs (:func:`fp32_depthwise`).

Both leave parameter names (and so checkpoints and exports) unchanged: channels-last only changes
memory layout, and ``nn.Module.compile`` compiles the backbone in place instead of wrapping it in an
``OptimizedModule`` (whose ``_orig_mod.`` prefix would leak into the state dict).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from b4transfer.errors import UserError

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x, *rest = args
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


_FP32_CLASSES: dict[type, type] = {}


def _fp32_forward(self, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return self._fp32_base.forward(self, x.float())


def _fp32_class(cls: type) -> type:
    """A subclass of the convolution class ``cls`` whose forward runs in fp32 with autocast off.

    Registered in this module under its name so that a pickled module still loads."""
    if cls not in _FP32_CLASSES:
        name = f"Fp32{cls.__name__}"
        sub = type(name, (cls,), {"forward": _fp32_forward, "_fp32_base": cls, "__module__": __name__})
        sub.__qualname__ = name
        globals()[name] = _FP32_CLASSES[cls] = sub
    return _FP32_CLASSES[cls]


def fp32_depthwise(module: nn.Module) -> int:
    """Run ``module``'s depthwise convolutions in fp32 under bf16 autocast; returns how many.

    On CPUs oneDNN's bf16 depthwise-convolution backward takes twice as long as fp32's, and it is most of
    an EfficientNet step: with the depthwise convolutions in fp32 (the rest bf16), a training step of
    ``tf_efficientnet_lite1`` at 224 px takes 0.74x the time of all-bf16 (docs/studies/precision.md). Only the
    class changes (a subclass, same parameters): state dicts, EMA copies and exports are as before.
    """
    count = 0
    for sub in module.modules():
        is_depthwise = isinstance(sub, nn.Conv2d) and sub.groups > 1 and sub.groups == sub.in_channels
        if is_depthwise and type(sub) not in _FP32_CLASSES.values():
            sub.__class__ = _fp32_class(type(sub))
            count += 1
    return count


def apply_speed_switches(
    module: nn.Module, model_cfg: Mapping[str, Any], channels_last: bool = False, fp32_dw: bool = False
) -> nn.Module:
    """Apply ``model.channels_last`` / ``compile`` / ``compile_mode`` to ``module``'s backbone.

    Args:
        module: a module with a ``backbone`` attribute (e.g. a ``TaskModule``).
        model_cfg: the ``model`` config; missing keys mean off.
        channels_last: NHWC even if ``model.channels_last`` is off (``precision=auto`` chose it).
        fp32_dw: depthwise convolutions in fp32 (bf16 autocast on a CPU: :func:`fp32_depthwise`).
    """
    backbone = module.backbone
    if fp32_dw and (count := fp32_depthwise(module)):
        log.info("bf16 on a CPU: %d depthwise convolutions stay fp32 (faster backward)", count)
    if model_cfg.get("channels_last") or channels_last:
        # NHWC weights (the whole module: a task head's convolutions too) and inputs: faster convolutions
        # with oneDNN on CPUs and on tensor-core GPUs, above all with bf16.
        module.to(memory_format=torch.channels_last)
        backbone.register_forward_pre_hook(_to_channels_last)
        log.info("channels_last: weights and inputs in channels-last (NHWC) layout")
    if model_cfg.get("compile"):
        mode = model_cfg.get("compile_mode") or "default"
        if mode not in COMPILE_MODES:
            raise UserError(
                f"model.compile_mode={mode!r} is not a torch.compile mode; choose one of "
                f"{', '.join(COMPILE_MODES)}."
            )
        backbone.compile(mode=None if mode == "default" else mode)
        log.info("model.compile=true: backbone compiled with torch.compile(mode=%s) on first use", mode)
    return module
