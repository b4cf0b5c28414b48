"""Freezing schedules and the BatchNorm policy: what is frozen really stays as in eval mode and unchanged."""

from __future__ import annotations

import copy
import csv

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.callbacks import BaseFinetuning

from b4transfer import tasks
from b4transfer.backbone.stages import backbone_stages
from b4transfer.config import plain as _plain
from b4transfer.modes import train
from b4transfer.modes.common import build_splits
from b4transfer.runs import prepare_run_dir
from b4transfer.tasks.classification.module import build_backbone
from b4transfer.training.finetuning import FreezeUnfreeze, Gradual, LinearProbe
from b4transfer.training.trainer import build_trainer


def _probe(tmp_path, name="states"):
    out = tmp_path / name
    return out, (f"+callbacks.{name}._target_=tests.probes.SaveStates", f"+callbacks.{name}.out_dir={out}")


def _load(out, when, rank=0):
    return torch.load(out / f"rank{rank}_{when}.pt", weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _changed(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fit(cfg, *callbacks):
    """train()'s own building blocks, with extra callbacks we can inspect afterwards."""
    run_dir = prepare_run_dir(cfg)
    L.seed_everything(cfg.seed)
    splits = build_splits(cfg, tasks.from_config(cfg))
    module = tasks.from_config(cfg).build_module(cfg, splits, build_backbone(_plain(cfg.model)))
    trainer = build_trainer(cfg, run_dir, extra_callbacks=callbacks)
    trainer.fit(module, datamodule=tasks.from_config(cfg).build_datamodule(cfg, splits, module))
    return module, trainer


# ------------------------------------------------------------------------------------------ stages
@pytest.mark.parametrize("features_only", [False, True])
def test_stages_are_cut_at_the_feature_info_levels_of_b4(features_only):
    with torch.device("meta"):
        model = timm.create_model("efficientnet_b4", features_only=features_only, num_classes=0)
    stages = backbone_stages(model)
    info = model.feature_info.get_dicts() if features_only else model.feature_info
    assert [s.reduction for s in stages] == [f["reduction"] for f in info] == [2, 4, 8, 16, 32]
    names = [n for n, _ in model.named_parameters()]
    assert [n for s in stages for n in s.params] == names  # every parameter once, in model order
    for stage, level in zip(stages, info):  # each stage ends with its feature level's module
        assert any(n.startswith(level["module"] + ".") for n in stage.params)
    assert stages[0].params[0] == "conv_stem.weight"
    assert any(n.startswith("blocks.3.") for n in stages[3].params)  # blocks.3 feeds the stride-16 level
    if not features_only:
        assert stages[-1].params[-1] == "bn2.bias"  # conv_head / bn2 follow the last level: top stage


# --------------------------------------------------------------------------------- must-show 1
def test_linear_probe_leaves_every_backbone_tensor_bit_identical(tiny_cfg, tmp_path):
    out, probe = _probe(tmp_path)
    train(tiny_cfg("finetune=linear_probe", "trainer.max_epochs=2", "model.drop_path_rate=0.2", *probe))
    start, end = _load(out, "start"), _load(out, "epoch1")
    assert _same(start["backbone"], end["backbone"]), _changed(start["backbone"], end["backbone"])
    assert any(k.endswith("running_mean") for k in start["backbone"])  # BN statistics are compared too
    assert _changed(start["head"], end["head"]) == ["fc.weight", "fc.bias"]


def test_linear_probe_needs_no_backward_through_the_backbone(tiny_cfg):
    module, _ = _fit(tiny_cfg("finetune=linear_probe", "logger=none"))
    assert not any(p.requires_grad for p in module.backbone.parameters())
    assert all(p.requires_grad for p in module.head.parameters())


# --------------------------------------------------------------------------------- must-show 2
class TrainVersusEval(L.Callback):
    """Right before each training step: the backbone as training sees it vs. a copy in eval mode."""

    def __init__(self):
        self.diffs, self.lightning_freeze_diffs = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert pl_module.training
        x = batch[0]
        reference = copy.deepcopy(pl_module.backbone).eval()
        lightning_frozen = copy.deepcopy(pl_module.backbone).train()
        BaseFinetuning.freeze(lightning_frozen, train_bn=False)  # the trap: BN still uses batch statistics
        with torch.no_grad():
            expected = reference(x)
            self.diffs.append((pl_module.backbone(x) - expected).abs().max().item())
            self.lightning_freeze_diffs.append((lightning_frozen(x) - expected).abs().max().item())


@pytest.mark.parametrize("schedule", ["linear_probe", "freeze_unfreeze"])
def test_a_frozen_backbone_in_train_mode_gives_its_eval_mode_output(tiny_cfg, schedule):
    probe = TrainVersusEval()
    _fit(tiny_cfg(f"finetune={schedule}", "model.drop_path_rate=0.2", "logger=none"), probe)
    assert len(probe.diffs) == 3  # 18 training images, batches of 8; epoch 0 is frozen in both schedules
    assert max(probe.diffs) < 1e-5
    assert min(probe.lightning_freeze_diffs) > 1e-3  # Lightning's freeze(train_bn=False) is not eval mode


# --------------------------------------------------------------------------------- must-show 3
def test_freeze_unfreeze_trains_the_backbone_from_the_given_epoch_with_lr_warmup(tiny_cfg, tmp_path):
    out, probe = _probe(tmp_path)
    schedule = ("finetune=freeze_unfreeze", "finetune.unfreeze_at_epoch=1", "optim.backbone_lr_mult=0.5")
    train(tiny_cfg(*schedule, "trainer.max_epochs=2", *probe))
    start, epoch0, epoch1 = (_load(out, w)["backbone"] for w in ("start", "epoch0", "epoch1"))
    assert _same(start, epoch0), _changed(start, epoch0)  # frozen: weights, BN stats, everything
    changed = _changed(epoch0, epoch1)
    assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    rows = [r for r in _rows(tmp_path / "run" / "metrics.csv") if r.get("lr-AdamW/backbone")]
    backbone_lr = [float(r["lr-AdamW/backbone"]) for r in rows]
    head_lr = [float(r["lr-AdamW/head"]) for r in rows]
    assert backbone_lr[:3] == [0.0, 0.0, 0.0]  # epoch 0: 3 steps, frozen
    assert backbone_lr[3:] == pytest.approx([0.5e-3 / 3, 1e-3 / 3, 0.5e-3])  # 0 -> 0.5 * lr over 1 epoch
    assert head_lr == pytest.approx([1e-3] * 6)


def test_gradual_unfreezes_stages_top_down(tiny_cfg, tmp_path):
    out, probe = _probe(tmp_path)
    train(tiny_cfg("finetune=gradual", "finetune.unfreeze_at_epochs=[1,2]", "trainer.max_epochs=3", *probe))
    states = [_load(out, w)["backbone"] for w in ("start", "epoch0", "epoch1", "epoch2")]
    with torch.device("meta"):
        stages = backbone_stages(timm.create_model("test_efficientnet", num_classes=0))

    def stage_of(key):  # a parameter or buffer -> the stage of its module
        prefix = key.rsplit(".", 1)[0] + "."
        return next(s.index for s in stages if any(p.startswith(prefix) for p in s.params))

    def changed_stages(a, b):
        return {stage_of(k) for k in _changed(a, b)}

    assert changed_stages(states[0], states[1]) == set()
    assert changed_stages(states[1], states[2]) == {4}  # the top stage (stride 32) first
    assert changed_stages(states[2], states[3]) == {3, 4}
    assert not {0, 1, 2} & changed_stages(states[0], states[3])  # never unfrozen: bit-identical
    rows = [r for r in _rows(tmp_path / "run" / "metrics.csv") if r.get("lr-AdamW/backbone.stage4")]
    assert [float(r["lr-AdamW/backbone.stage4"]) for r in rows][:4] == pytest.approx([0, 0, 0, 1e-3 / 3])
    assert [float(r["lr-AdamW/backbone.stage3"]) for r in rows][3:7] == pytest.approx([0, 0, 0, 1e-3 / 3])
    assert all(float(r["lr-AdamW/backbone.stage0"]) == 0 for r in rows)


# ------------------------------------------------------------------------------------ BN policy
@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_bn_policy_of_trainable_stages(tiny_cfg, tmp_path, bn):
    out, probe = _probe(tmp_path)
    train(tiny_cfg("finetune=full", f"finetune.bn={bn}", *probe))
    start, end = _load(out, "start")["backbone"], _load(out, "epoch0")["backbone"]
    changed = _changed(start, end)
    stats = [k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert any(k.endswith("conv_stem.weight") for k in changed)  # weights train either way
    assert any(k.endswith("bn1.weight") for k in changed)  # and so do BN's affine weights
    assert (stats == []) == (bn == "frozen")


# ------------------------------------------------------------------------- DDP-safe requires_grad
def test_requires_grad_is_fixed_at_setup_for_a_ddp_safe_unfreeze(tiny_cfg, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="b4transfer.training.finetuning"):
        module, _ = _fit(tiny_cfg("finetune=freeze_unfreeze", "logger=none"))  # 1 epoch: frozen all along
    assert not any(p.requires_grad for p in module.backbone.parameters())  # never trains in this run
    assert "start at epoch 1 never train with trainer.max_epochs=1. HINT" in caplog.text
    module, _ = _fit(
        tiny_cfg(
            "finetune=freeze_unfreeze", "trainer.max_epochs=2", "logger=none", f"run_dir={tmp_path / 'r2'}"
        )
    )
    # trains later: registered (requires_grad) from the start, so DDP all-reduces it once it trains
    assert all(p.requires_grad for p in module.backbone.parameters())


# ---------------------------------------------------------------------------------------- errors
def test_bad_schedule_settings_are_named():
    with pytest.raises(ValueError, match=r"finetune.bn='eval' is not a BatchNorm policy; choose one of"):
        FreezeUnfreeze(bn="eval")
    with pytest.raises(ValueError, match=r"finetune.unfreeze_at_epoch must be an epoch number >= 0.*got -1"):
        FreezeUnfreeze(unfreeze_at_epoch=-1)
    with pytest.raises(ValueError, match=r"finetune.warmup_epochs must be a number >= 0, got 'x'"):
        LinearProbe(warmup_epochs="x")
    with pytest.raises(ValueError, match=r"non-decreasing list of epochs .* got \[3, 1\]"):
        Gradual(unfreeze_at_epochs=[3, 1])
    with pytest.raises(ValueError, match=r"must be a list of epochs, top stage first .* got 2"):
        Gradual(unfreeze_at_epochs=2)


def test_gradual_with_more_epochs_than_stages_fails_at_start_up(tiny_cfg):
    with pytest.raises(ValueError, match=r"unfreeze_at_epochs has 6 entries .* backbone has 5 stages"):
        train(tiny_cfg("finetune=gradual", "finetune.unfreeze_at_epochs=[1,2,3,4,5,6]"))


def test_resuming_with_a_different_schedule_warns(caplog):
    saved = FreezeUnfreeze(unfreeze_at_epoch=1)
    saved.starts = saved.stage_starts(5)
    now = FreezeUnfreeze(unfreeze_at_epoch=3)
    now.starts = now.stage_starts(5)
    with caplog.at_level("WARNING", logger="b4transfer.training.finetuning"):
        now.load_state_dict(saved.state_dict())
    assert "Resuming with a different fine-tuning schedule" in caplog.text and "HINT" in caplog.text
    caplog.clear()
    saved.load_state_dict(saved.state_dict())
    assert caplog.text == ""


def test_frozen_stages_stay_in_eval_mode_after_the_strategy_converts_batchnorm():
    from types import SimpleNamespace

    from timm.layers import convert_sync_batchnorm

    from b4transfer.tasks.classification import ClassificationModule

    module = ClassificationModule(class_names=["a", "b"], model={"name": "test_efficientnet"})
    trainer = SimpleNamespace(
        max_epochs=2, current_epoch=0, optimizers=[SimpleNamespace(param_groups=[{"stages": [0]}])]
    )
    schedule = FreezeUnfreeze(unfreeze_at_epoch=1)
    schedule.setup(trainer, module, "fit")
    module.backbone = convert_sync_batchnorm(module.backbone)  # as the SyncBN plugin does, after setup
    schedule.on_fit_start(trainer, module)
    module.train()
    schedule.on_train_epoch_start(trainer, module)
    synced = [m for m in module.backbone.modules() if "SyncBatchNorm" in type(m).__name__]
    assert synced and not any(m.training for m in synced)


@pytest.mark.slow
def test_detection_schedules_freeze_only_the_backbone_fpn_and_heads_train(tmp_path):
    from tests.conftest import TINY, compose_cfg

    out, probe = _probe(tmp_path)
    cfg = compose_cfg(
        *TINY,
        "task=detection",
        "data.source.image_size=64",
        "data.source.train_images=16",
        "data.source.val_images=8",
        f"data.source.root={tmp_path / 'demo'}",
        "head.fpn_channels=32",
        f"run_dir={tmp_path / 'run'}",
        "finetune=gradual",
        "finetune.unfreeze_at_epochs=[1]",
        "trainer.max_epochs=2",
        *probe,
    )
    train(cfg)
    start, epoch0, epoch1 = (_load(out, w) for w in ("start", "epoch0", "epoch1"))
    assert _same(start["backbone"], epoch0["backbone"])  # frozen in epoch 0
    assert _changed(start["head"], epoch0["head"])  # FPN and detector heads train from the start
    moved = _changed(epoch0["backbone"], epoch1["backbone"])  # epoch 1: the top stage only
    assert moved and not [k for k in moved if k.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1."))]
