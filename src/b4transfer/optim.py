"""Optimizer parameter groups and timm optimizer / scheduler factories.

Groups are named (``head``, ``head_no_decay``, ``backbone``, ``backbone_no_decay``) so
their learning rates can be logged and restored by name. Norm weights and biases (every
parameter with fewer than two dimensions) get no weight decay.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

SCHEDULERS = ("cosine", "step", "multistep", "poly", "tanh", "constant")


def _split_decay(named_params) -> tuple[list, list]:
    decay, no_decay = [], []
    for _, p in named_params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def param_groups(
    *,
    backbone: nn.Module,
    head: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Named parameter groups: head vs backbone LR, no weight decay on norms and biases.

    Every parameter is included, frozen or not, so a later unfreeze needs no new group.
    """
    if lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {lr}.")
    if backbone_lr_mult < 0:
        raise ValueError(f"optim.backbone_lr_mult must be >= 0, got {backbone_lr_mult}.")
    groups = []
    for name, module, mult in (("head", head, 1.0), ("backbone", backbone, backbone_lr_mult)):
        decay, no_decay = _split_decay(module.named_parameters())
        for suffix, params, wd in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append(
                    {
                        "name": name + suffix,
                        "params": params,
                        "lr": lr * mult,
                        "weight_decay": wd,
                        "lr_scale": mult,
                    }
                )
    return groups


def create_optimizer(
    groups: list[dict[str, Any]], *, name: str = "adamw", lr: float, **kwargs: Any
) -> torch.optim.Optimizer:
    """Build any timm optimizer (``adamw``, ``sgd``, ``rmsproptf``, ``lamb``, ...) over ``groups``."""
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, **kwargs)
    except (AssertionError, ValueError) as err:
        if "Invalid optimizer" in str(err) or "optimizer" in str(err).lower():
            raise ValueError(
                f"optim.name={name!r} is not a timm optimizer ({err}). "
                "Use e.g. adamw, sgd, rmsproptf, lamb, adan (see timm.optim.list_optimizers())."
            ) from err
        raise


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str = "cosine",
    num_epochs: int,
    updates_per_epoch: int,
    warmup_epochs: float = 0,
    **kwargs: Any,
):
    """A timm scheduler stepped per optimizer update (``scheduler.step_update(global_step)``)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler.name={name!r} is not supported; choose one of {SCHEDULERS}.")
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=name,
        num_epochs=num_epochs,
        warmup_epochs=warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=max(1, updates_per_epoch),
        **kwargs,
    )
    return scheduler
