"""Test-only Lightning callbacks, injectable through the config (``+callbacks.NAME._target_=tests.probes.X``).

They run inside ``python run.py`` subprocesses too (DDP ranks included), so they report through files.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class SaveStates(L.Callback):
    """Saves ``{backbone, head}`` tensors at train start and after every epoch: ``rank<r>_<when>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {"backbone": _state(pl_module.backbone), "head": _state(pl_module.head)}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}_{when}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, f"epoch{trainer.current_epoch}")


class Killed(RuntimeError):
    """Stands for the process being killed: nothing after it runs, only files on disk survive."""


class KillAtEpoch(L.Callback):
    """Aborts the run when epoch ``epoch`` starts (after ``last.ckpt`` of the previous epoch was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed(f"killed at the start of epoch {self.epoch}")


class NaiveUnfreeze(BaseFinetuning):
    """The trap, for contrast: Lightning's way, ``requires_grad`` off in setup and back on at epoch 1."""

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.backbone, train_bn=True)

    def finetune_function(self, pl_module, current_epoch, optimizer) -> None:
        if current_epoch == 1:  # the optimizer already holds every parameter: no group to add
            self.make_trainable(pl_module.backbone)
