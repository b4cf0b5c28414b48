"""Drawing a class activation map over the image the model saw."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["input_view", "overlay"]


def input_view(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The model's input ``(3, H, W)`` (normalised with ``mean`` / ``std``) as ``(H, W, 3)`` uint8 pixels:
    the resized, cropped view that the map explains."""
    m = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (x.detach().float().cpu() * s + m).clamp(0, 1) * 255
    return pixels.round().byte().permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, cam: torch.Tensor | np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """``image`` ``(H, W, 3)`` uint8 with ``cam`` (a 0..1 map of any size, upsampled bilinearly) drawn over
    it in the ``jet`` colours at opacity ``alpha`` (scaled by the map: no evidence leaves the image as is)."""
    from matplotlib import colormaps

    height, width = image.shape[:2]
    heat = torch.as_tensor(cam, dtype=torch.float32).cpu()[None, None]
    heat = F.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0, 1).numpy()
    colours = colormaps["jet"](heat)[..., :3]
    weight = alpha * (0.3 + 0.7 * heat)[..., None]  # faint blue where the map is low, strong where high
    blended = (1 - weight) * image.astype(np.float32) / 255 + weight * colours
    return (blended.clip(0, 1) * 255).round().astype(np.uint8)
