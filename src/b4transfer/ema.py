"""EMA of the weights (``ema.enabled=true``): Lightning's ``WeightAveraging`` with timm's decay warm-up.

Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` keeps the averaged copy, swaps it in for
every validation (so ``val/*`` metrics, and the best checkpoint chosen by them, are the EMA model's),
copies it into the model when training ends, and writes it as the checkpoint's ``state_dict`` (the raw
weights go under ``current_model_state``; resuming restores both). So ``load_module``, ``mode=predict``
and the export all use the EMA weights.

What this subclass adds, as timm's ``ModelEmaV3`` does: the decay warms up as
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short fine-tuning runs are not dominated by
the initial weights; the update is a ``lerp`` (a tensor that did not change, e.g. a frozen stage, stays
bit-identical); integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging


class EMA(WeightAveraging):
    """Exponential moving average of parameters and buffers, updated after every optimizer step.

    Args:
        decay: the EMA decay in [0, 1) (timm's RA2 recipe: 0.9999 over a long run).
        warmup: ramp the decay up as ``min(decay, (1 + n) / (10 + n))``.
        update_every_n_steps: update after every n-th optimizer step.
        device: where the averaged copy lives (``None``: with the model; ``"cpu"`` saves accelerator memory).
    """

    def __init__(
        self,
        *,
        decay: float = 0.999,
        warmup: bool = True,
        update_every_n_steps: int = 1,
        device: str | None = None,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), e.g. 0.999, got {decay!r}.")
        if (
            isinstance(update_every_n_steps, bool)
            or not isinstance(update_every_n_steps, int)
            or update_every_n_steps < 1
        ):
            raise ValueError(
                f"ema.update_every_n_steps must be an integer >= 1, got {update_every_n_steps!r}."
            )
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._update)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every_n_steps = update_every_n_steps

    def decay_at(self, num_averaged: int) -> float:
        """The decay used for the update after ``num_averaged`` earlier ones."""
        if self.warmup:
            return min(self.decay, (1.0 + num_averaged) / (10.0 + num_averaged))
        return self.decay

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0

    @torch.no_grad()
    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        # called per (device, dtype) bucket by torch.optim.swa_utils.AveragedModel
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        weight = 1.0 - self.decay_at(int(num_averaged))
        torch._foreach_lerp_(averaged, current, weight)
