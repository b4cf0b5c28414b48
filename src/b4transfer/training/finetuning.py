"""Freezing schedules (``finetune=full|linear_probe|freeze_unfreeze|gradual``) and the BatchNorm policy.

Each schedule is a Lightning callback that says, per backbone stage (see :mod:`b4transfer.backbone.stages`),
from which epoch it trains (``None``: never). The head always trains; the callbacks only ever touch
``pl_module.backbone``, so a detection head (FPN + detector heads) counts as head too.

What "frozen" means here, and why it is not Lightning's ``BaseFinetuning``:

* **Exactly eval mode.** Every module of a frozen stage is put in eval mode before each training batch:
  BatchNorm normalises with its running statistics and leaves them unchanged, dropout and drop path are
  off. ``BaseFinetuning.freeze(train_bn=False)`` only stops BN's gradients: it still normalises with
  batch statistics and updates the running ones.
* **No update at all.** A frozen parameter's gradient is dropped before the optimizer step (and before
  gradient clipping), so no optimizer touches it: no step, no weight decay, no momentum state. Its group's
  ``lr_scale`` is 0, so the logged LR reads 0 too. On unfreezing, ``lr_scale`` ramps linearly from 0 to its
  ``lr_mult`` over ``warmup_epochs`` (applied through the timm scheduler, on top of its own schedule).
* **DDP-safe.** DDP registers, when it wraps the model, the parameters that require grad; toggling
  ``requires_grad`` afterwards leaves the newly trainable ones out of the gradient all-reduce and the
  ranks drift apart. So a stage that will train at some point of the run keeps ``requires_grad=True``
  from the start (its gradient is computed and all-reduced while frozen, then dropped), and only stages
  that never train in this run get ``requires_grad=False`` (set in ``setup``, before DDP wraps the model,
  and never changed): a linear probe costs no backward pass through the backbone.
* **Resumable.** What is frozen, and each group's ``lr_scale``, is a function of the epoch and batch, which
  Lightning restores from ``last.ckpt`` with the optimizer's param groups (all present from the start).
  ``state_dict`` records the schedule, and a resumed run with a different one gets a warning.

``bn=train`` (default) lets the BatchNorm layers of trainable stages use batch statistics and update their
running ones; ``bn=frozen`` keeps them in eval mode (their affine weights still train).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from torch import nn

from b4transfer.backbone.stages import backbone_stages, module_stages
from b4transfer.errors import UserError, UserTypeError

log = logging.getLogger(__name__)

BN_POLICIES = ("train", "frozen")
# finetune= config name of each schedule class
SCHEDULE_NAMES = {"Full": "full", "LinearProbe": "linear_probe", "FreezeUnfreeze": "freeze_unfreeze",
                  "Gradual": "gradual"}


def schedule_name(finetune: Any) -> str | None:
    """The ``finetune=`` name of a schedule config (``{"_target_": "...Gradual"}`` -> ``gradual``); a
    schedule class of the user's own gives its class name; ``None`` without a schedule."""
    if not finetune:
        return None
    target = str(finetune.get("_target_") or "").rsplit(".", 1)[-1]
    return finetune.get("name") or SCHEDULE_NAMES.get(target, target or None)


def _check_epoch(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{key} must be an epoch number >= 0 (an integer), got {value!r}.")
    return value


class FinetuneSchedule(L.Callback):
    """Base class: trains backbone stage ``k`` from epoch ``stage_starts()[k]`` on.

    Args:
        bn: BatchNorm policy of the trainable stages: ``train`` (batch statistics, running stats updated)
            or ``frozen`` (eval mode: running statistics used and kept). Frozen stages are always in eval
            mode.
        warmup_epochs: a stage's LR rises linearly from 0 over this many epochs after it starts training
            (0: full LR at once).
    """

    needs_stage_groups = False  # one optimizer group pair per stage (gradual unfreezing)

    def __init__(self, *, bn: str = "train", warmup_epochs: float = 0.0) -> None:
        if bn not in BN_POLICIES:
            raise UserError(f"finetune.bn={bn!r} is not a BatchNorm policy; choose one of {BN_POLICIES}.")
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, (int, float))
            or warmup_epochs < 0
        ):
            raise UserError(f"finetune.warmup_epochs must be a number >= 0, got {warmup_epochs!r}.")
        self.bn = bn
        self.warmup_epochs = float(warmup_epochs)
        self.starts: list[int | None] = []
        self.trainable: list[bool] = []
        self._modules: list[tuple[nn.Module, frozenset[int]]] = []
        self._stage_params: list[list[nn.Parameter]] = []
        self._loaded: dict[str, Any] | None = None
        self.first_phase_only = False  # mode=lr_find: stages not trainable at step 0 stay frozen throughout

    # ------------------------------------------------------------ schedule
    def stage_starts(self, num_stages: int) -> list[int | None]:
        """Epoch from which each stage (input side first) trains; ``None``: never."""
        raise NotImplementedError

    def lr_factor(self, stage: int, progress: float) -> float:
        """LR factor of ``stage`` at ``progress`` (epochs, fractional): 0 frozen, ramping to 1 after start."""
        start = self.starts[stage]
        if start is None or progress < start:
            return 0.0
        if self.warmup_epochs == 0:
            return 1.0
        return min(1.0, (progress - start) / self.warmup_epochs)

    # --------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        num_stages = self._collect(pl_module)
        self.starts = list(self.stage_starts(num_stages))
        assert len(self.starts) == num_stages
        max_epochs = (
            trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        )
        late = [s for s in self.starts if s is not None and max_epochs is not None and s >= max_epochs]
        if late and not self.first_phase_only:
            log.warning(
                "finetune=%s: stages set to start at epoch %s never train with trainer.max_epochs=%s. "
                "HINT: raise trainer.max_epochs or unfreeze earlier.",
                type(self).__name__,
                min(late),
                max_epochs,
            )
        for params, start in zip(self._stage_params, self.starts):
            never = start is None or (max_epochs is not None and start >= max_epochs)
            never = never or (self.first_phase_only and start > 0)
            for p in params:  # fixed for the whole run, before DDP wraps the model
                p.requires_grad_(not never)
        if self.first_phase_only:  # the LR finder replaces all callbacks: set the modes once, here
            self._set_trainable(pl_module, progress=0.0)
        log.info(
            "Fine-tuning schedule %s: stage start epochs %s, bn=%s", type(self).__name__, self.starts, self.bn
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # again: the strategy may have replaced modules since setup (SyncBatchNorm conversion)
        self._collect(pl_module)
        self._check_groups(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set_trainable(pl_module, progress=float(trainer.current_epoch))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        n = trainer.num_training_batches
        epoch = trainer.current_epoch
        if n and math.isfinite(n):
            self._set_trainable(pl_module, progress=epoch + batch_idx / n)
            # LR of this batch's update: the warm-up fraction reached at the end of the batch
            self._apply_lr_scales(trainer, progress=epoch + (batch_idx + 1) / n)
        else:  # epoch length unknown (iterable data): warm up per epoch
            self._set_trainable(pl_module, progress=float(epoch))
            self._apply_lr_scales(trainer, progress=epoch + 1.0)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        for params, trainable in zip(self._stage_params, self.trainable):
            if not trainable:
                for p in params:
                    p.grad = None  # the optimizer skips it: no step, no weight decay, no state

    # ------------------------------------------------------------- helpers
    def _collect(self, pl_module: L.LightningModule) -> int:
        """The backbone's stage parameters and modules; returns the number of stages."""
        backbone = pl_module.backbone
        stages = backbone_stages(backbone)
        named = dict(backbone.named_parameters())
        self._stage_params = [[named[n] for n in s.params] for s in stages]
        self._modules = module_stages(backbone)
        return len(stages)

    def _set_trainable(self, pl_module: L.LightningModule, *, progress: float) -> None:
        self.trainable = [s is not None and progress >= s for s in self.starts]
        for module, stages in self._modules:
            train = any(self.trainable[k] for k in stages)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and self.bn == "frozen":
                train = False
            module.training = train

    def _apply_lr_scales(self, trainer: L.Trainer, *, progress: float) -> None:
        schedulers = [
            c.scheduler for c in trainer.lr_scheduler_configs if hasattr(c.scheduler, "step_update")
        ]
        if not schedulers:  # e.g. the LR finder's own scheduler: freezing still holds, LRs are its
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                factors = {self.lr_factor(k, progress) for k in group.get("stages") or ()}
                assert len(factors) <= 1, f"group {group.get('name')} spans stages with different LR factors"
                group["lr_scale"] = group.get("lr_mult", 1.0) * (factors.pop() if factors else 1.0)
        for scheduler in schedulers:
            scheduler.step_update(num_updates=trainer.global_step)

    def _check_groups(self, trainer: L.Trainer) -> None:
        for optimizer in trainer.optimizers:
            if any(g.get("stages") for g in optimizer.param_groups):
                continue
            raise UserTypeError(
                f"finetune={type(self).__name__} needs optimizer groups built by "
                "b4transfer.training.optim.param_groups (each with its backbone 'stages'); the optimizer has "
                "none. "
                "Build the optimizer with "
                "TaskModule.configure_optimizers or param_groups()."
            )

    # --------------------------------------------------------------- state
    def _config(self) -> dict[str, Any]:
        return {
            "schedule": type(self).__name__,
            "starts": list(self.starts),
            "bn": self.bn,
            "warmup_epochs": self.warmup_epochs,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**self._config(), "trainable": list(self.trainable)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        self._check_resumed_schedule()

    def _check_resumed_schedule(self) -> None:
        if self._loaded is None or not self.starts:
            return
        saved = {k: self._loaded.get(k) for k in self._config()}
        if saved != self._config():
            log.warning(
                "Resuming with a different fine-tuning schedule than the checkpoint's: saved %s, now %s. "
                "HINT: pass the same finetune=... settings to continue the original schedule.",
                saved,
                self._config(),
            )


class Full(FinetuneSchedule):
    """``finetune=full``: every stage trains from step 0."""

    def stage_starts(self, num_stages: int) -> list[int | None]:
        return [0] * num_stages


class LinearProbe(FinetuneSchedule):
    """``finetune=linear_probe``: the backbone is frozen (eval mode, no gradients) for the whole run."""

    def stage_starts(self, num_stages: int) -> list[int | None]:
        return [None] * num_stages


class FreezeUnfreeze(FinetuneSchedule):
    """``finetune=freeze_unfreeze``: head only for ``unfreeze_at_epoch`` epochs, then the whole backbone.

    Args:
        unfreeze_at_epoch: first epoch in which the backbone trains.
        warmup_epochs: the backbone LR rises from 0 over this many epochs after unfreezing.
        bn: BatchNorm policy of the backbone once it trains (``train`` or ``frozen``).
    """

    def __init__(self, *, unfreeze_at_epoch: int = 1, warmup_epochs: float = 1.0, bn: str = "train") -> None:
        super().__init__(bn=bn, warmup_epochs=warmup_epochs)
        self.unfreeze_at_epoch = _check_epoch("finetune.unfreeze_at_epoch", unfreeze_at_epoch)

    def stage_starts(self, num_stages: int) -> list[int | None]:
        return [self.unfreeze_at_epoch] * num_stages


class Gradual(FinetuneSchedule):
    """``finetune=gradual``: stages unfrozen top-down, the top stage at ``unfreeze_at_epochs[0]``.

    Args:
        unfreeze_at_epochs: non-decreasing epochs; entry ``i`` unfreezes the ``i``-th stage from the top.
            Stages beyond the list stay frozen for the whole run (B4 has 5 stages, see
            :func:`b4transfer.backbone.stages.backbone_stages`).
        warmup_epochs: each stage's LR rises from 0 over this many epochs after it is unfrozen.
        bn: BatchNorm policy of the unfrozen stages (``train`` or ``frozen``).
    """

    needs_stage_groups = True

    def __init__(
        self,
        *,
        unfreeze_at_epochs: Sequence[int] = (1, 2, 3, 4, 5),
        warmup_epochs: float = 1.0,
        bn: str = "train",
    ) -> None:
        super().__init__(bn=bn, warmup_epochs=warmup_epochs)
        if isinstance(unfreeze_at_epochs, (str, bytes)) or not isinstance(unfreeze_at_epochs, Sequence):
            raise UserError(
                f"finetune.unfreeze_at_epochs must be a list of epochs, top stage first (e.g. [1, 2, 3]), "
                f"got {unfreeze_at_epochs!r}."
            )
        epochs = [_check_epoch("finetune.unfreeze_at_epochs[]", e) for e in unfreeze_at_epochs]
        if not epochs or any(b < a for a, b in zip(epochs, epochs[1:])):
            raise UserError(
                "finetune.unfreeze_at_epochs must be a non-empty, non-decreasing list of epochs (the top "
                f"stage first, lower stages later), got {list(unfreeze_at_epochs)}."
            )
        self.unfreeze_at_epochs = epochs

    def stage_starts(self, num_stages: int) -> list[int | None]:
        epochs = self.unfreeze_at_epochs
        if len(epochs) > num_stages:
            raise UserError(
                f"finetune.unfreeze_at_epochs has {len(epochs)} entries {epochs} but the backbone has "
                f"{num_stages} stages (cut at its feature_info levels). Give at most {num_stages} epochs."
            )
        top_down = list(epochs) + [None] * (num_stages - len(epochs))
        return top_down[::-1]


def trains_batch_norm(finetune: Any) -> bool:
    """Whether the schedule ever lets backbone BatchNorm normalise with batch statistics (``bn=train``
    on a stage that trains): every schedule but ``linear_probe`` and ``bn=frozen``."""
    return schedule_name(finetune) != "linear_probe" and (finetune or {}).get("bn", "train") != "frozen"


def check_batch_of_one(cfg: Any, module: L.LightningModule, train_images: int) -> None:
    """Refuse, before training, a run whose training batches hold one image while the backbone's
    BatchNorm trains and one of its layers would then see a single value per channel (a 1x1 feature
    map): PyTorch stops such a batch mid-epoch. A last batch of one is dropped by the datamodules
    (:func:`b4transfer.data.loaders.lone_last_batch`); this is ``data.batch_size=1`` or a training split of
    one image."""
    batch = int(cfg.data.batch_size)
    if min(batch, train_images) > 1 or not trains_batch_norm(cfg.get("finetune")):
        return
    import torch

    size = tuple(module.data_config["train"]["input_size"])
    seen: list[tuple[str, int]] = []
    hooks = [
        m.register_forward_hook(lambda m, args, out, name=name: seen.append((name, args[0][0, 0].numel())))
        for name, m in module.backbone.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    training = [m.training for m in module.backbone.modules()]
    try:
        module.backbone.eval()
        with torch.no_grad():
            module.backbone(torch.zeros(1, *size))
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in zip(module.backbone.modules(), training):
            m.training = mode
    single = [name for name, values in seen if values == 1]
    if single:
        why = f"data.batch_size={batch}" if batch == 1 else f"the training split holds {train_images} image"
        raise UserError(
            f"{why} at {size[-2]}x{size[-1]} px: BatchNorm layer backbone.{single[0]} would normalise a 1x1 "
            "feature map of one image (1 value per channel), which fails in training. Fix: "
            f"data.batch_size>=2{'' if batch == 1 else ' with more training images'}, a larger "
            f"data.image_size (e.g. {2 * size[-1]}), or finetune.bn=frozen (BatchNorm in eval mode)."
        )
