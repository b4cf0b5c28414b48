"""Optimizer parameter groups and timm optimizer / scheduler factories.

Groups are named (``head``, ``head_no_decay``, ``backbone``, ``backbone_no_decay``) so
their learning rates can be logged and restored by name. Norm weights and biases (every
parameter with fewer than two dimensions) get no weight decay. The backbone groups can be
split per stage (``backbone.stage4``, see :mod:`b4transfer.backbone.stages`) or per timm layer with
layer-wise LR decay (``backbone.layer12``); every group records the ``stages`` it covers.

A group's LR multiplier (``backbone_lr_mult`` x layer-decay scale) is its ``lr_mult`` and goes to
the optimizer as timm's ``lr_scale``, which every timm scheduler multiplies into the LR it sets,
warm-up included (so build one: :func:`create_scheduler`, ``name="none"`` for a constant LR). The
freezing schedules of :mod:`b4transfer.training.finetuning` set ``lr_scale = lr_mult x f`` with ``f`` 0
for a frozen stage, ramping to 1 after it is unfrozen.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.scheduler import StepLRScheduler, create_scheduler_v2
from torch import nn

from b4transfer.backbone.stages import param_stage_map
from b4transfer.errors import UserError
from b4transfer.settings import OptimSettings, SchedulerSettings

log = logging.getLogger(__name__)

SCHEDULERS = ("cosine", "step", "multistep", "poly", "tanh")


def _layer_ids(backbone: nn.Module) -> dict[str, int]:
    """Parameter name -> layer id: timm's fine ``group_matcher`` groups (stem, each block, head conv),
    or the stage index for models without one (``features_only`` extractors)."""
    if hasattr(backbone, "group_matcher"):
        return group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    return param_stage_map(backbone)


def param_groups(
    *,
    backbone: nn.Module,
    head: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    split_stages: bool = False,
) -> list[dict[str, Any]]:
    """Named parameter groups: head vs backbone LR, no weight decay on norms and biases.

    Every parameter is included, frozen or not, so a later unfreeze needs no new group.

    Args:
        backbone: the timm backbone.
        head: the task head (always LR ``lr``).
        lr: base (head) learning rate.
        weight_decay: weight decay of weights with two or more dimensions.
        backbone_lr_mult: backbone LR = ``lr * backbone_lr_mult``.
        layer_decay: layer-wise LR decay in (0, 1]: backbone layer ``i`` of ``L`` gets
            ``layer_decay ** (L - i)`` on top (the head is layer ``L``); layers are timm's
            ``group_matcher`` groups, or the stages for models without one; ``None`` for none.
        split_stages: one group pair per backbone stage (needed by per-stage freezing schedules).

    Returns:
        Groups with ``name``, ``params``, ``lr`` (= ``lr``), ``weight_decay``, ``lr_mult`` (the group's
        LR relative to ``lr``), ``lr_scale`` (= ``lr_mult``, applied by timm schedulers) and ``stages``
        (stage indices; empty for the head).
    """
    if lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {lr}.")
    if backbone_lr_mult < 0:
        raise UserError(f"optim.backbone_lr_mult must be >= 0, got {backbone_lr_mult}.")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise UserError(
            f"optim.layer_decay must be in (0, 1] (e.g. 0.8), or null for no layer-wise decay; "
            f"got {layer_decay}."
        )
    stage_of = param_stage_map(backbone)
    layers = _layer_ids(backbone) if layer_decay is not None else {}
    num_layers = max(layers.values(), default=-1) + 1
    buckets: dict[tuple, dict[str, Any]] = {}

    def add(key: tuple, name: str, param, mult: float, decay: bool, stage: int | None) -> None:
        group = buckets.setdefault(
            key + (decay,),
            {
                "name": name + ("" if decay else "_no_decay"),
                "params": [],
                "lr": lr,  # the timm scheduler sets lr = schedule(lr) * lr_scale
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": mult,
                "lr_mult": mult,
                "stages": set(),
            },
        )
        group["params"].append(param)
        if stage is not None:
            group["stages"].add(stage)

    for param in head.parameters():
        add(("head",), "head", param, 1.0, param.ndim > 1, None)
    for name, param in backbone.named_parameters():
        stage, decay = stage_of[name], param.ndim > 1
        if layer_decay is not None:
            layer = layers.get(name, num_layers - 1)
            mult = backbone_lr_mult * layer_decay ** (num_layers - layer)
            add(("layer", layer, stage), f"backbone.layer{layer}", param, mult, decay, stage)
        elif split_stages:
            add(("stage", stage), f"backbone.stage{stage}", param, backbone_lr_mult, decay, stage)
        else:
            add(("backbone",), "backbone", param, backbone_lr_mult, decay, stage)
    groups = list(buckets.values())
    _unique_names(groups)
    for group in groups:
        group["stages"] = sorted(group["stages"])
    return groups


def _unique_names(groups: list[dict[str, Any]]) -> None:
    """A layer cut by a stage boundary (models without group_matcher) gets ``.stageK`` in its name."""
    seen: dict[str, int] = {}
    for group in groups:
        seen[group["name"]] = seen.get(group["name"], 0) + 1
    for group in groups:
        if seen[group["name"]] > 1:
            base, no_decay, _ = group["name"].partition("_no_decay")
            group["name"] = f"{base}.stage{min(group['stages'])}{no_decay}"


def configure(
    *,
    backbone: nn.Module,
    head: nn.Module,
    optim: OptimSettings,
    scheduler: SchedulerSettings,
    from_scratch: bool,
    split_stages: bool,
    num_epochs: int,
    updates_per_epoch: int,
) -> dict[str, Any]:
    """The optimizer and its per-update timm scheduler for a module's ``backbone`` and ``head`` (what
    ``LightningModule.configure_optimizers`` returns), from the typed ``optim`` and ``scheduler`` settings.

    ``optim.lr_scaling`` / ``base_batch_size`` are not read here: training scales ``optim.lr`` before.
    ``from_scratch`` (random backbone weights): ``optim.layer_decay`` is not applied. ``split_stages``: one
    group pair per backbone stage (a freezing schedule that unfreezes stage by stage).
    """
    layer_decay = optim.layer_decay
    if layer_decay is not None and from_scratch:
        # the decay keeps pretrained lower layers near their weights; random ones must learn (the
        # quickstart's from-scratch demo run stays at chance with it: docs/studies/demo-runs.md)
        log.warning(
            "optim.layer_decay=%s is not applied: the backbone starts from random weights "
            "(model.pretrained=false, no model.weights), so every backbone layer trains at lr * "
            "optim.backbone_lr_mult.",
            layer_decay,
        )
        layer_decay = None
    groups = param_groups(
        backbone=backbone,
        head=head,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        backbone_lr_mult=optim.backbone_lr_mult,
        layer_decay=layer_decay,
        split_stages=split_stages,
    )
    optimizer = create_optimizer(groups, name=optim.name, lr=optim.lr, **optim.optimizer_kwargs())
    # Always a timm scheduler (a constant one for scheduler=none): it applies each group's lr_scale.
    lr_scheduler = create_scheduler(
        optimizer,
        name=scheduler.name,
        num_epochs=num_epochs,
        updates_per_epoch=updates_per_epoch,
        **scheduler.kwargs("name"),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}


def create_optimizer(
    groups: list[dict[str, Any]], *, name: str = "adamw", lr: float, **kwargs: Any
) -> torch.optim.Optimizer:
    """Build any timm optimizer (``adamw``, ``sgd``, ``rmsproptf``, ``lamb``, ...) over ``groups``."""
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, **kwargs)
    except (AssertionError, ValueError) as err:
        if "Invalid optimizer" in str(err) or "optimizer" in str(err).lower():
            raise UserError(
                f"optim.name={name!r} is not a timm optimizer ({err}). "
                "Use e.g. adamw, sgd, rmsproptf, lamb, adan (see timm.optim.list_optimizers())."
            ) from err
        raise


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str | None = "cosine",
    num_epochs: int,
    updates_per_epoch: int,
    warmup_epochs: float = 0,
    **kwargs: Any,
):
    """A timm scheduler stepped per optimizer update (``scheduler.step_update(global_step)``).

    ``name="none"`` (or ``None``) gives a constant LR, still as a timm scheduler so that each
    group's ``lr_scale`` (set by the freezing schedules) is applied.
    """
    if name in (None, "none"):
        updates = max(1, updates_per_epoch)
        return StepLRScheduler(
            optimizer,
            decay_t=10**9,
            decay_rate=1.0,
            warmup_t=round(warmup_epochs * updates),
            warmup_lr_init=kwargs.get("warmup_lr", 1e-5),  # as timm's create_scheduler_v2
            t_in_epochs=False,
        )
    if name not in SCHEDULERS:
        raise UserError(
            f"scheduler.name={name!r} is not supported; choose one of {SCHEDULERS} or none (constant LR)."
        )
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
