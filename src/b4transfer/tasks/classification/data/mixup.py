"""Mixup / CutMix on training batches (``data.mixup``), a thin wrapper over ``timm.data.Mixup``.

Targets become soft ``(N, K)`` class probabilities, which the classification head's loss takes as they
are (label smoothing stays the head's job: timm's own smoothing is off here). timm mixes a batch with its
reverse and needs an even batch; an odd batch (the last of an epoch) has its last image left unmixed
with a one-hot target instead of crashing the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup

from b4transfer.errors import UserError

MODES = ("batch", "pair", "elem")


class BatchMixup:
    """Apply timm Mixup/CutMix to a collated ``(images, targets)`` batch.

    Args:
        num_classes: number of classes (width of the soft targets).
        multi_label: targets are multi-hot ``(N, K)`` vectors rather than class indices.
        mixup_alpha: Beta(alpha, alpha) mixup strength; 0 turns mixup off.
        cutmix_alpha: Beta(alpha, alpha) CutMix strength; 0 turns CutMix off.
        prob: probability of mixing a batch (or element, see ``mode``).
        switch_prob: with both on, probability of CutMix instead of mixup.
        mode: ``batch``, ``pair`` or ``elem``: how mixing parameters are drawn.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        multi_label: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
    ) -> None:
        for key, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"data.mixup.{key} must be a number >= 0 (0 turns it off), got {value!r}.")
        for key, value in (("prob", prob), ("switch_prob", switch_prob)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"data.mixup.{key} must be a probability in [0, 1], got {value!r}.")
        if mode not in MODES:
            raise UserError(f"data.mixup.mode={mode!r} is not a mixing mode; choose one of {MODES}.")
        kwargs: dict[str, Any] = {}
        if multi_label:
            if "multi_label" not in inspect.signature(Mixup).parameters:
                raise UserError(
                    "data.mixup with multi-label data needs timm's multi-label Mixup (timm >= 1.0.20). "
                    "Upgrade timm or set data.mixup.mixup_alpha=0 and data.mixup.cutmix_alpha=0."
                )
            kwargs["multi_label"] = True
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.mixup = Mixup(
            mixup_alpha=float(mixup_alpha),
            cutmix_alpha=float(cutmix_alpha),
            prob=float(prob),
            switch_prob=float(switch_prob),
            mode=mode,
            label_smoothing=0.0,
            num_classes=num_classes,
            **kwargs,
        )

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        if n < 2:
            return x, self._dense(target)
        even = n - n % 2
        mixed_x, mixed_y = self.mixup(x[:even], target[:even])  # x is mixed in place
        if even == n:
            return mixed_x, mixed_y
        x = torch.cat([mixed_x, x[even:]])
        return x, torch.cat([mixed_y, self._dense(target[even:]).to(mixed_y.dtype)])

    def _dense(self, target: torch.Tensor) -> torch.Tensor:
        if self.multi_label or target.ndim == 2:
            return target.float()
        return F.one_hot(target, self.num_classes).float()


def build_mixup(
    options: Mapping[str, Any] | None, *, num_classes: int, multi_label: bool
) -> BatchMixup | None:
    """A :class:`BatchMixup` from ``data.mixup`` options, or ``None`` when both alphas are 0 / unset."""
    if not options:
        return None
    options = dict(options)
    if not (options.get("mixup_alpha") or options.get("cutmix_alpha")):
        return None
    known = set(inspect.signature(BatchMixup).parameters) - {"num_classes", "multi_label"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"data.mixup has unknown key(s) {unknown}; valid keys: {sorted(known)}.")
    return BatchMixup(num_classes=num_classes, multi_label=multi_label, **options)
