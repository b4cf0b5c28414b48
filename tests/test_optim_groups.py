"""Optimizer groups, LR multipliers through timm schedulers, layer-wise decay, the optimizer presets."""

from __future__ import annotations

import pytest
import timm
import torch
from tests.conftest import compose_cfg

from b4transfer.tasks.classification.head import ClassificationHead
from b4transfer.training.devices import split_lr_scaling
from b4transfer.training.optim import create_optimizer, create_scheduler, param_groups


@pytest.fixture(scope="module")
def backbone():
    return timm.create_model("test_efficientnet", num_classes=0)


def _groups(backbone, **kwargs):
    head = ClassificationHead(getattr(backbone, "num_features", 8), 3)
    return param_groups(backbone=backbone, head=head, lr=1e-3, weight_decay=0.05, **kwargs), head


def _lrs(optimizer) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def test_every_parameter_once_no_decay_on_norms_and_biases(backbone):
    groups, head = _groups(backbone)
    assert [g["name"] for g in groups] == ["head", "head_no_decay", "backbone", "backbone_no_decay"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in [*backbone.parameters(), *head.parameters()])
    for g in groups:
        assert (g["weight_decay"] == 0.0) == g["name"].endswith("_no_decay")
        assert all((p.ndim <= 1) == g["name"].endswith("_no_decay") for p in g["params"])
    assert groups[2]["stages"] == [0, 1, 2, 3, 4] and groups[0]["stages"] == []


@pytest.mark.parametrize("sched", ["cosine", "step", "none"])
def test_backbone_lr_mult_holds_at_every_step_of_a_timm_schedule(backbone, sched):
    groups, _ = _groups(backbone, backbone_lr_mult=0.2)
    optimizer = create_optimizer(groups, name="adamw", lr=1e-3)
    extra = {"decay_epochs": 1, "decay_rate": 0.5} if sched == "step" else {}
    scheduler = create_scheduler(
        optimizer, name=sched, num_epochs=3, updates_per_epoch=4, warmup_epochs=1, **extra
    )
    seen = []
    for step in range(12):
        scheduler.step_update(step)
        lrs = _lrs(optimizer)
        assert lrs["backbone"] == pytest.approx(0.2 * lrs["head"])  # not 0.2**2: lr_scale is not the mult
        seen.append(lrs["head"])
    assert seen[0] == pytest.approx(1e-5)  # timm's warm-up start
    if sched == "none":
        assert seen[4:] == pytest.approx([1e-3] * 8)  # constant after the warm-up


def test_layer_wise_decay_follows_timm_layers(backbone):
    groups, _ = _groups(backbone, layer_decay=0.5, backbone_lr_mult=1.0)
    layers = {
        g["name"]: g
        for g in groups
        if g["name"].startswith("backbone.layer") and "_no_decay" not in g["name"]
    }
    lrs = [layers[f"backbone.layer{i}"]["lr_scale"] * 1e-3 for i in range(len(layers))]
    n = len(lrs)  # test_efficientnet: stem, 5 blocks (conv_head/bn2 join the last): 6 layers
    assert n == 6
    assert lrs == pytest.approx([1e-3 * 0.5 ** (n - i) for i in range(n)])
    assert layers["backbone.layer0"]["stages"] == [0] and layers[f"backbone.layer{n - 1}"]["stages"] == [4]
    assert next(g for g in groups if g["name"] == "head")["lr_scale"] == 1.0


def test_layer_wise_decay_by_stage_for_feature_extractors_without_group_matcher():
    extractor = timm.create_model("test_efficientnet", features_only=True)
    assert not hasattr(extractor, "group_matcher")
    groups, _ = _groups(extractor, layer_decay=0.5)
    scales = {g["name"]: g["lr_scale"] for g in groups if "_no_decay" not in g["name"]}
    assert scales == pytest.approx({"head": 1.0, **{f"backbone.layer{k}": 0.5 ** (5 - k) for k in range(5)}})


def test_stage_groups_for_per_stage_schedules(backbone):
    groups, _ = _groups(backbone, split_stages=True)
    names = [g["name"] for g in groups]
    assert names[2:] == [f"backbone.stage{k}{s}" for k in range(5) for s in ("", "_no_decay")]
    assert all(g["stages"] == [int(g["name"][14])] for g in groups[2:])


def test_bad_values_are_named(backbone):
    with pytest.raises(ValueError, match=r"optim.layer_decay must be in \(0, 1\].*got 1.5"):
        _groups(backbone, layer_decay=1.5)
    with pytest.raises(ValueError, match=r"optim.backbone_lr_mult must be >= 0, got -1"):
        _groups(backbone, backbone_lr_mult=-1)
    groups, _ = _groups(backbone)
    optimizer = create_optimizer(groups, name="adamw", lr=1e-3)
    with pytest.raises(ValueError, match=r"scheduler.name='linear' is not supported; choose one of"):
        create_scheduler(optimizer, name="linear", num_epochs=1, updates_per_epoch=1)


@pytest.mark.parametrize("preset", ["adamw", "sgd", "rmsproptf", "lamb"])
def test_optimizer_presets_build_and_step(backbone, preset):
    cfg = compose_cfg(f"optim={preset}")
    options, scaling = split_lr_scaling(cfg.optim)  # lr_scaling is applied by train(), not here
    assert scaling["lr_scaling"] == "none"
    name, lr = options.pop("name"), options.pop("lr")
    groups, head = _groups(
        backbone, backbone_lr_mult=options.pop("backbone_lr_mult"), layer_decay=options.pop("layer_decay")
    )
    optimizer = create_optimizer(
        groups, name=name, lr=lr, **{k: v for k, v in options.items() if k != "weight_decay"}
    )
    assert type(optimizer).__name__.lower().startswith(name[:4])
    before = head.fc.weight.detach().clone()
    loss = head(backbone(torch.randn(2, 3, 32, 32))).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, head.fc.weight)
