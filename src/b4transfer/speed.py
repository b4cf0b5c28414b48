"""Speed switches applied to a built module: ``model.channels_last`` and ``model.compile``.

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


def apply_speed_switches(
    module: nn.Module, model_cfg: Mapping[str, Any], channels_last: bool = False
) -> nn.Module:
    """Apply ``model.channels_last`` / ``compile`` / ``compile_mode`` to ``module``'s backbone.

    Args:
        module: a module with a ``backbone`` attribute (e.g. a ``TaskModule``).
        model_cfg: the ``model`` config; missing keys mean off.
        channels_last: NHWC even if ``model.channels_last`` is off (``precision=auto`` chose it).
    """
    backbone = module.backbone
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
