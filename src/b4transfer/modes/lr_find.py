"""``mode=lr_find``: Lightning's learning-rate range test over the task's loss; saves ``lr_find.png``
and prints the suggestion.

The search trains what the run's first phase trains: with ``finetune=freeze_unfreeze`` or
``linear_probe`` the backbone stays frozen and the suggestion is the head's LR; with ``finetune=full``
everything trains. Every param group gets the same LR during the search (``backbone_lr_mult`` is not
applied), so the suggestion is a value for ``optim.lr``. The model's weights are left as they were.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig

from b4transfer import tasks
from b4transfer.config import plain
from b4transfer.errors import UserError
from b4transfer.modes.common import build_splits
from b4transfer.runs import prepare_run_dir, write_summary
from b4transfer.training import devices

log = logging.getLogger(__name__)


def lr_find(cfg: DictConfig) -> dict[str, Any]:
    """Run the LR range test of ``cfg.lr_find`` (``min_lr``, ``max_lr``, ``num_training``, ``mode``)."""
    options = {"min_lr": 1e-6, "max_lr": 1.0, "num_training": 100, "mode": "exponential"}
    options.update(plain(cfg.get("lr_find")) or {})
    if not 0 < options["min_lr"] < options["max_lr"]:
        raise UserError(
            f"lr_find.min_lr={options['min_lr']} and lr_find.max_lr={options['max_lr']} must satisfy "
            "0 < min_lr < max_lr, e.g. lr_find.min_lr=1e-6 lr_find.max_lr=1."
        )
    task = tasks.from_config(cfg)
    task.check_config(cfg)
    run_dir = prepare_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    backbone = task.build_backbone(cfg)
    splits = build_splits(cfg, task)
    module = task.build_module(cfg, splits, backbone)
    module.lr_finding = True  # its validation passes write no plots of a model worth keeping
    datamodule = task.build_datamodule(cfg, splits, module)
    callbacks = []
    if cfg.get("finetune"):
        schedule = instantiate(cfg.finetune)
        schedule.first_phase_only = True  # what trains at step 0 trains; the rest stays frozen
        callbacks.append(schedule)
    trainer_cfg = {**plain(cfg.trainer), "enable_progress_bar": False, "num_sanity_val_steps": 0}
    # num_training steps however small the data: as many epochs as it takes (each has a step at least),
    # and no validation pass (the search reads the training loss)
    epochs = max(int(trainer_cfg.get("max_epochs") or 1), int(options["num_training"]))
    trainer_cfg.update(max_epochs=epochs, check_val_every_n_epoch=epochs + 1)
    trainer_cfg["precision"] = devices.resolve_precision(trainer_cfg).used
    trainer = L.Trainer(
        **trainer_cfg,
        default_root_dir=str(run_dir),
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
    )
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False, **options)
    suggestion = finder.suggestion() if finder is not None else None
    summary: dict[str, Any] = {"mode": "lr_find", "task": task.name, "suggested_lr": suggestion}
    summary["search"] = options
    summary["losses_recorded"] = len(finder.results.get("loss", [])) if finder is not None else 0
    if finder is not None and trainer.is_global_zero:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = finder.plot(suggest=suggestion is not None)
        schedule = type(callbacks[0]).__name__ if callbacks else "none"
        fig.axes[0].set_title(f"LR range test ({cfg.model.name}, finetune={schedule})")
        fig.savefig(run_dir / "lr_find.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        summary["plot"] = str(run_dir / "lr_find.png")
    if suggestion is None and finder is not None:
        summary["no_suggestion"] = _why_no_suggestion(finder, options)
    if trainer.is_global_zero:
        if suggestion is None:
            print(f"LR finder: no suggestion: {summary['no_suggestion']} (plot: {run_dir / 'lr_find.png'})")
        else:
            print(f"LR finder suggests optim.lr={suggestion:.3g} (plot: {run_dir / 'lr_find.png'})")
    write_summary(run_dir, summary)
    return summary


# Lightning's suggestion skips the first 10 and the last loss and needs 2 finite ones in between
SKIPPED, NEEDED = 11, 13


def _why_no_suggestion(finder, options: dict[str, Any]) -> str:
    """Why Lightning's finder gave no suggestion, with the numbers and the fix."""
    losses, lrs = finder.results.get("loss", []), finder.results.get("lr", [])
    steps = int(options["num_training"])
    if steps < NEEDED:
        return (
            f"lr_find.num_training={steps} records {steps} losses and a suggestion needs at least {NEEDED} "
            f"(the first {SKIPPED - 1} and the last are skipped). Fix: lr_find.num_training=100"
        )
    return (
        f"the loss diverged after {len(losses)} of lr_find.num_training={steps} steps (at lr "
        f"{lrs[-1] if lrs else options['min_lr']:.3g}), {NEEDED} are needed. Fix: a lower lr_find.max_lr or "
        "a higher lr_find.min_lr"
    )
