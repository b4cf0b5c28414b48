"""Backbone stages: the backbone's own structure cut at its feature levels.

A timm backbone describes its feature maps in ``feature_info`` (B4: ``blocks.0, blocks.1, blocks.2,
blocks.4, blocks.6`` at strides 2 ... 32) and orders its layers with ``group_matcher`` (stem, then the
block groups, with ``conv_head`` / ``bn2`` merged into the last one). Stage ``k`` holds every parameter
from just after feature level ``k - 1`` up to and including feature level ``k``; whatever follows the
last level (``conv_head``, ``bn2``) joins the top stage. Freezing schedules and per-stage optimizer
groups use these stages, so no block index is written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn


@dataclass(frozen=True)
class Stage:
    """One backbone stage.

    Args:
        index: 0 for the stage nearest the input, ``len(stages) - 1`` for the top one.
        name: ``stage<index>``, used in optimizer group names (``backbone.stage4``).
        reduction: stride of the stage's output relative to the input (B4: 2, 4, 8, 16, 32).
        params: names of the parameters in the stage, in model order.
    """

    index: int
    name: str
    reduction: int | None
    params: tuple[str, ...]


def _feature_levels(backbone: nn.Module) -> list[dict]:
    """Every feature level the backbone holds: a ``features_only`` model returning only some levels
    (detection: strides 8-32) still holds the layers below them, so it is cut at all of them."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return []
    levels = list(getattr(info, "info", None) or (info.get_dicts() if hasattr(info, "get_dicts") else info))
    owned = {name.rsplit(".", 1)[0] for name, _ in backbone.named_parameters()}
    return [lv for lv in levels if any(o == lv["module"] or o.startswith(lv["module"] + ".") for o in owned)]


def _param_ordinals(backbone: nn.Module) -> dict[str, int]:
    """Position of each parameter along the network: timm's coarse layer groups, else model order."""
    if hasattr(backbone, "group_matcher"):
        return group_parameters(backbone, backbone.group_matcher(coarse=True), reverse=True)
    return {name: i for i, (name, _) in enumerate(backbone.named_parameters())}


def backbone_stages(backbone: nn.Module) -> list[Stage]:
    """Cut ``backbone`` into stages at its ``feature_info`` levels.

    Args:
        backbone: a timm model (classification trunk or ``features_only``).

    Returns:
        Stages, input side first; one stage holding everything when the model has no ``feature_info``.
    """
    names = [name for name, _ in backbone.named_parameters()]
    levels = _feature_levels(backbone)
    if not levels:
        return [Stage(0, "stage0", None, tuple(names))]
    ordinal = _param_ordinals(backbone)
    bounds = []
    for level in levels:
        prefix = level["module"] + "."
        inside = [ordinal[n] for n in names if n.startswith(prefix)]
        assert inside, f"feature_info module {level['module']!r} owns no parameters"
        bounds.append(max(inside))
    members: list[list[str]] = [[] for _ in levels]
    for name in names:
        k = next((i for i, bound in enumerate(bounds) if ordinal[name] <= bound), len(levels) - 1)
        members[k].append(name)
    return [
        Stage(k, f"stage{k}", levels[k].get("reduction"), tuple(params)) for k, params in enumerate(members)
    ]


def param_stage_map(backbone: nn.Module) -> dict[str, int]:
    """Parameter name -> stage index."""
    return {name: stage.index for stage in backbone_stages(backbone) for name in stage.params}


def module_stages(backbone: nn.Module) -> list[tuple[nn.Module, frozenset[int]]]:
    """Every module of ``backbone`` with the stages it belongs to.

    A module belongs to the stages of the parameters below it; a module with none (activation, drop
    path, pooling) takes those of its closest ancestor that has some. Containers spanning several
    stages (``blocks``, the model itself) list them all.
    """
    stage_of = param_stage_map(backbone)
    every = frozenset(stage_of.values()) or frozenset({0})
    under: dict[str, set[int]] = {}
    for name, stage in stage_of.items():
        parts = name.split(".")[:-1]
        for i in range(len(parts) + 1):
            under.setdefault(".".join(parts[:i]), set()).add(stage)
    result = []
    for name, module in backbone.named_modules():
        parts = name.split(".") if name else []
        stages = None
        for i in range(len(parts), -1, -1):
            stages = under.get(".".join(parts[:i]))
            if stages:
                break
        result.append((module, frozenset(stages or every)))
    return result
