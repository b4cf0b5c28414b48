"""Recipes in conf/experiment/ compose and run; the LR finder mode writes its plot and suggestion."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from tests.conftest import TINY, compose_cfg

from b4transfer import tasks
from b4transfer.modes import run, train
from b4transfer.modes.common import build_splits

NO_SCHEDULER_OVERRIDE = tuple(o for o in TINY if not o.startswith("scheduler="))


def _cfg(tmp_path, image_folder, *overrides):
    return compose_cfg(
        *NO_SCHEDULER_OVERRIDE,
        "data=folder",
        f"data.root={image_folder}",
        f"run_dir={tmp_path / 'run'}",
        *overrides,
    )


def test_ra2_recipe_composes_to_the_model_card_recipe_and_runs_a_step(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, "experiment=ra2", "trainer.limit_train_batches=1", "data.batch_size=8")
    assert cfg.optim.name == "rmsproptf" and cfg.optim.eps == 1e-3
    assert cfg.scheduler.name == "step" and cfg.scheduler.decay_rate == 0.97
    assert (cfg.model.drop_rate, cfg.model.drop_path_rate) == (0.4, 0.2)
    assert cfg.ema.enabled and cfg.finetune._target_.endswith("Full")
    assert cfg.optim.layer_decay is None  # one backbone LR, as the recipe trained
    task = tasks.from_config(cfg)
    splits = build_splits(cfg, task)
    train_tf = repr(task.build_datamodule(cfg, splits, task.build_module(cfg, splits)).train_transform)
    assert "RandAugment" in train_tf and "RandomErasing" in train_tf

    summary = train(cfg)
    assert summary["global_step"] == 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["alpha"] == 0.9 and group["eps"] == 1e-3  # timm's RMSpropTF
    assert summary["batch"]["lr"] == pytest.approx(0.016 * 8 / 256)  # the recipe's LR, scaled to batch 8
    assert "current_model_state" in ckpt  # EMA on


def test_small_data_recipe_runs(tmp_path, image_folder):
    summary = train(_cfg(tmp_path, image_folder, "experiment=finetune_small"))
    assert summary["epochs"] == 1 and 0 <= summary["metrics"]["val/acc1"] <= 1


def test_layer_wise_lr_decay_applies_to_pretrained_backbones_only(tmp_path, image_folder, caplog):
    """Pretrained weights (here a local file): one LR group per timm layer, decaying down the backbone.
    Random weights (model.pretrained=false): one backbone LR, and a warning says why."""
    weights = tmp_path / "pretrained.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    runs = {"pretrained": (f"model.weights={weights}",), "random": ()}
    lrs = {}
    for name, extra in runs.items():
        cfg = _cfg(tmp_path / name, image_folder, "trainer.limit_train_batches=1", "optim.layer_decay=0.75",
                   *extra)
        with caplog.at_level(logging.WARNING, logger="b4transfer.tasks.base"):
            train(cfg)
        with open(tmp_path / name / "run" / "metrics.csv", newline="") as f:
            row = next(r for r in csv.DictReader(f) if r.get("lr-AdamW/head"))
        lrs[name] = {k.removeprefix("lr-AdamW/"): float(v) for k, v in row.items() if k.startswith("lr-")}
    pretrained = lrs["pretrained"].items()
    layers = {int(k.removeprefix("backbone.layer")): v for k, v in pretrained if k[-1].isdigit()}
    top = max(layers) + 1  # the head is layer L
    assert len(layers) > 2 and layers == pytest.approx({i: 1e-3 * 0.75 ** (top - i) for i in layers})
    assert set(lrs["random"]) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert lrs["random"]["backbone"] == lrs["random"]["head"] == pytest.approx(1e-3)
    warned = [r.getMessage() for r in caplog.records if "layer_decay" in r.getMessage()]
    assert len(warned) == 1 and "random weights" in warned[0]


def test_layer_wise_lr_decay_is_opt_in_and_pinned_by_finetune_small():
    """Reverted by the dev benchmark (docs/studies/multi-dataset-defaults.md): one backbone LR by default
    for every task; experiment=finetune_small pins the earlier recipe with decay 0.75."""
    assert compose_cfg().optim.layer_decay is None
    assert compose_cfg("optim=sgd").optim.layer_decay is None
    assert compose_cfg("optim.layer_decay=0.75").optim.layer_decay == 0.75
    assert compose_cfg("experiment=finetune_small").optim.layer_decay == 0.75
    for task in ("detection", "segmentation"):
        assert compose_cfg(f"task={task}").optim.layer_decay is None


def test_lr_find_mode_saves_a_plot_and_prints_a_suggestion(tmp_path, image_folder, capsys):
    cfg = _cfg(
        tmp_path,
        image_folder,
        "mode=lr_find",
        "lr_find.num_training=14",  # Lightning's suggestion skips the first 10 and the last point
        "data.batch_size=2",
        "trainer.max_epochs=2",
    )
    summary = run(cfg)
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 5000
    assert 1e-6 <= summary["suggested_lr"] <= 1.0
    assert f"LR finder suggests optim.lr={summary['suggested_lr']:.3g}" in capsys.readouterr().out
    assert (
        json.loads((tmp_path / "run" / "summary.json").read_text())["suggested_lr"] == summary["suggested_lr"]
    )
    assert summary["mode"] == "lr_find" and summary["search"]["num_training"] == 14
    assert not list((tmp_path / "run").glob(".lr_find*.ckpt"))


def test_lr_find_rejects_a_bad_range(tmp_path, image_folder):
    with pytest.raises(ValueError, match=r"lr_find.min_lr=0.1 and lr_find.max_lr=0.01 must satisfy"):
        run(_cfg(tmp_path, image_folder, "mode=lr_find", "lr_find.min_lr=0.1", "lr_find.max_lr=0.01"))
