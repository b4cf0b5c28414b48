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

And it skips work that cannot change anything: a tensor whose average still equals it bit for bit
(every tensor right after the first update, and a frozen one for the whole run) and that did not change
in this step is left alone, since ``lerp(a, a, w) == a``. "Did not change": a parameter the optimizer
skipped (its ``.grad`` is ``None`` after the step: frozen stages, the backbone of a cached-feature probe)
or a buffer of a module in eval mode (frozen BatchNorm). Once a tensor changes it is averaged at every
update, as before. On a linear probe of B4 this drops the per-step EMA cost from the whole network
(19 M parameters) to the head. Under FSDP (sharded parameters), or if the averaged copy and the model
do not line up module by module, every tensor is averaged as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from b4transfer.errors import UserError
from b4transfer.settings import EmaSettings


class EMA(WeightAveraging):
    """Exponential moving average of parameters and buffers, updated after every optimizer step.

    Args:
        decay: the EMA decay in [0, 1) (timm's RA2 recipe: 0.9999 over a long run); ``None``: ``ema.decay``'s
            default (``conf/config.yaml``, as every default of ``ema``).
        warmup: ramp the decay up as ``min(decay, (1 + n) / (10 + n))``.
        update_every_n_steps: update after every n-th optimizer step.
        device: where the averaged copy lives (``None``: with the model; ``"cpu"`` saves accelerator memory).
    """

    def __init__(
        self,
        *,
        decay: float | None = None,
        warmup: bool | None = None,
        update_every_n_steps: int | None = None,
        device: str | None = None,
    ) -> None:
        default = EmaSettings.of(None, key="ema")  # conf/config.yaml's ema
        decay = default.decay if decay is None else decay
        warmup = default.warmup if warmup is None else warmup
        if update_every_n_steps is None:
            update_every_n_steps = default.update_every_n_steps
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise UserError(f"ema.decay must be in [0, 1), e.g. 0.999, got {decay!r}.")
        if (
            isinstance(update_every_n_steps, bool)
            or not isinstance(update_every_n_steps, int)
            or update_every_n_steps < 1
        ):
            raise UserError(
                f"ema.update_every_n_steps must be an integer >= 1, got {update_every_n_steps!r}."
            )
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._update)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every_n_steps = update_every_n_steps
        self._in_sync: list[bool] | None = None  # per tensor: average == current, bit for bit
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._exact = True
        self._seen_step = 0
        self.skipped_tensors = 0  # tensor updates skipped (unchanged and in sync), for tests and curiosity

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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._in_sync, self._pairs, self._seen_step = None, None, 0
        self._exact = "FSDP" not in type(trainer.strategy).__name__  # sharded parameters: plain EMA

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        stepped = trainer.global_step > self._seen_step  # an optimizer step ended this (micro-)batch
        self._seen_step = trainer.global_step
        update = (
            stepped
            and trainer.global_step > self._latest_update_step
            and self.should_update(step_idx=trainer.global_step - 1)
        )
        self.after_batch(pl_module, stepped=stepped, update=update)
        if update:
            self._latest_update_step = trainer.global_step

    def after_batch(self, pl_module: L.LightningModule, *, stepped: bool, update: bool) -> None:
        """Note what may have changed in this batch (every batch, update or not), then update if due."""
        if self._in_sync is not None:
            changed = self._may_have_changed(params=stepped)
            self._in_sync = [s and not c for s, c in zip(self._in_sync, changed)]
        if update:
            self._update_changed(pl_module)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._in_sync = None  # unknown after a restore: the next update compares

    def _tensor_pairs(self, pl_module: L.LightningModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(averaged, current)`` for every parameter, then every buffer (by owning module)."""
        if self._pairs is None:
            averaged = self._average_model.module
            params = list(zip(averaged.parameters(), pl_module.parameters()))
            owners = list(zip(averaged.modules(), pl_module.modules()))
            buffers = [
                pair for a, c in owners for pair in zip(a.buffers(recurse=False), c.buffers(recurse=False))
            ]
            self._pairs = params + buffers
            # what "may have changed" reads: a parameter's .grad, a buffer's module's training flag
            self._grad_of = [c for _, c in params]
            self._owner_of = [c for _, c in owners for _ in c.buffers(recurse=False)]
            counts = {
                len(self._pairs),
                len(list(averaged.parameters())) + len(list(averaged.buffers())),
                len(list(pl_module.parameters())) + len(list(pl_module.buffers())),
            }
            if len(counts) != 1 or any(a.shape != c.shape or a.dtype != c.dtype for a, c in self._pairs):
                self._exact = False  # the two models do not line up module by module: plain EMA
        return self._pairs

    def _may_have_changed(self, *, params: bool) -> list[bool]:
        # parameters change only in an optimizer step, and only those with a gradient; buffers
        # (BatchNorm statistics) in any forward pass of a module in training mode
        grads = [p.grad is not None for p in self._grad_of] if params else [False] * len(self._grad_of)
        return grads + [m.training for m in self._owner_of]

    @torch.no_grad()
    def _update_changed(self, pl_module: L.LightningModule) -> None:
        averaged_model = self._average_model
        pairs = self._tensor_pairs(pl_module) if self._exact else []
        if not self._exact or averaged_model.n_averaged == 0 or self._in_sync is None:
            averaged_model.update_parameters(pl_module)  # the first update copies everything
            if self._exact:  # after a restore: which tensors this full update left equal (frozen ones)
                self._in_sync = [torch.equal(a, c.to(a.device)) for a, c in pairs]
            return
        groups: dict[tuple, tuple[list, list]] = {}
        for (avg, cur), in_sync in zip(pairs, self._in_sync):
            if in_sync:  # equal to its average and unchanged since: lerp(a, a, w) == a
                self.skipped_tensors += 1
                continue
            avg_list, cur_list = groups.setdefault((avg.device, avg.dtype), ([], []))
            avg_list.append(avg.detach())
            cur_list.append(cur.detach().to(avg.device))
        for avg_list, cur_list in groups.values():
            self._update(avg_list, cur_list, averaged_model.n_averaged)
        averaged_model.n_averaged += 1

    @contextmanager
    def averaged_weights(self, pl_module: L.LightningModule) -> Iterator[None]:
        """The averaged weights in ``pl_module`` for the ``with`` block (the raw ones restored after it,
        bit for bit): what a full checkpoint stores as ``state_dict``. Outside ``fit`` (no averaged copy) it
        changes nothing."""
        if self._average_model is None:
            yield
            return
        self._swap_models(pl_module)
        try:
            yield
        finally:
            self._swap_models(pl_module)

    @torch.no_grad()
    def _swap_models(self, pl_module: L.LightningModule) -> None:
        """Swap the weights for validation, leaving out tensors equal to their average (a no-op swap)."""
        if self._in_sync is None:
            return super()._swap_models(pl_module)
        for (avg, cur), in_sync in zip(self._tensor_pairs(pl_module), self._in_sync):
            if not in_sync:
                tmp = avg.data.clone()
                avg.data.copy_(cur.data)
                cur.data.copy_(tmp)
