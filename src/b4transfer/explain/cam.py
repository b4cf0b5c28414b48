"""Class activation maps from a feature map ``A`` (N, C, h, w) and ``G = d score / d A`` of the same shape.

* ``gradcam`` (Selvaraju et al. 2017): channel weights = spatial mean of ``G``; map = ReLU(sum_c w_c A_c).
* ``gradcampp`` (Chattopadhay et al. 2018): channel weights = sum over positions of ReLU(G) * alpha,
  alpha = G^2 / (2 G^2 + sum_ij(A) G^3) (the closed form for an exponential score, as in ``grad-cam``).
* ``layercam`` (Jiang et al. 2021): map = ReLU(sum_c ReLU(G) * A), a weight per position.

Each map is scaled to 0..1 (its maximum is 1; a map with no positive evidence stays 0). The default
(``layercam`` on the stride-16 map; ``gradcam`` tied with it) was chosen with ``scripts/cam_study.py``: a
model trained on images where a red square in the top-left quadrant decides the class; see README
"Explanations" for the numbers.
"""

from __future__ import annotations

import torch

from b4transfer.errors import UserError

__all__ = ["DEFAULT_METHOD", "METHODS", "activation_map", "check_method"]

METHODS = ("gradcam", "gradcampp", "layercam")
DEFAULT_METHOD = "layercam"
_EPS = 1e-7


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else a :class:`UserError` naming them."""
    if method not in METHODS:
        raise UserError(
            f"predict.explain_method={method!r} is not a class activation map; use one of "
            f"{', '.join(METHODS)}."
        )
    return method


def _channel_weights(features: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    if method == "gradcam":
        return grads.mean(dim=(2, 3), keepdim=True)
    # gradcampp: (N, C, h, w) -> (N, C, 1, 1)
    g2 = grads.pow(2)
    denominator = 2 * g2 + features.sum(dim=(2, 3), keepdim=True) * g2 * grads
    alpha = torch.where(grads != 0, g2 / (denominator + _EPS), torch.zeros_like(grads))
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)


def activation_map(features: torch.Tensor, grads: torch.Tensor, method: str = DEFAULT_METHOD) -> torch.Tensor:
    """The class activation maps ``(N, h, w)`` in 0..1 of ``features`` and ``grads`` ``(N, C, h, w)``.

    Args:
        features: The feature map the maps are drawn on (e.g. a backbone's last convolutional map).
        grads: The gradient of each image's class score with respect to ``features``.
        method: One of :data:`METHODS`.
    """
    check_method(method)
    if features.shape != grads.shape or features.ndim != 4:
        raise ValueError(f"features {tuple(features.shape)}, grads {tuple(grads.shape)}: want (N, C, h, w)")
    features, grads = features.float(), grads.float()
    if method == "layercam":
        cam = (grads.clamp(min=0) * features).sum(dim=1)
    else:
        cam = (_channel_weights(features, grads, method) * features).sum(dim=1)
    cam = cam.clamp(min=0)
    peak = cam.flatten(1).amax(dim=1).clamp(min=_EPS)
    return cam / peak[:, None, None]
