"""Model statistics as timm's model cards state them, measured on the exported model: parameters, GMACs
(``torch.utils.flop_counter``: multiply-adds = FLOPs / 2) and activations (output elements of every
convolution and linear layer, as fvcore counts them, which timm's cards use), at a given input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["model_stats"]


@torch.no_grad()
def model_stats(model: nn.Module, size: int) -> dict[str, float]:
    """``{"params_m", "gmacs", "activations_m", "image_size"}`` of ``model`` on one square ``size`` image."""
    count = [0]

    def hook(_module, _inputs, output):
        count[0] += output.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as flops:
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "gmacs": round(flops.get_total_flops() / 2e9, 2),
        "activations_m": round(count[0] / 1e6, 2),
        "image_size": size,
    }
