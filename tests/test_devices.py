"""Precision / strategy / trainer presets, batch-size and LR-scaling plan, speed switches."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from tests.conftest import compose_cfg

from b4transfer.modes import train
from b4transfer.runtime.speed import apply_speed_switches
from b4transfer.training.devices import build_strategy, default_num_workers, scaled_lr
from b4transfer.training.trainer import build_trainer


@pytest.mark.parametrize("choice", ["32-true", "bf16-mixed", "16-mixed", "bf16-true"])
def test_precision_group_sets_trainer_precision(choice):
    assert compose_cfg(f"precision={choice}").trainer.precision == choice


def test_default_precision_is_auto_and_cli_can_still_override_the_key():
    assert compose_cfg().trainer.precision == "auto"
    assert compose_cfg("trainer.precision=bf16-mixed").trainer.precision == "bf16-mixed"


def test_16_mixed_on_cpu_falls_back_to_bf16_with_one_clear_warning(tiny_cfg):
    cfg = tiny_cfg("precision=16-mixed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(cfg, Path(cfg.run_dir))
    fp16 = [w for w in caught if "fp16 is not supported on CPU" in str(w.message)]
    assert len(fp16) == 1 and "bf16-mixed" in str(fp16[0].message)
    assert trainer.precision == "bf16-mixed"


def test_bf16_mixed_trains_and_the_summary_states_precision_and_batch(tiny_cfg):
    summary = train(
        tiny_cfg("precision=bf16-mixed", "trainer.accumulate_grad_batches=2", "trainer.limit_val_batches=1")
    )
    assert summary["precision"] == "bf16-mixed" and summary["global_step"] > 0
    assert summary["batch"] == {
        "per_device_batch_size": 8,
        "devices": 1,
        "num_nodes": 1,
        "accumulate_grad_batches": 2,
        "global_batch_size": 16,
        "lr_scaling": "none",
        "base_lr": 1e-3,
        "lr": 1e-3,
    }


def test_linear_lr_scaling_is_applied_to_the_optimizer_and_logged(tiny_cfg, caplog):
    cfg = tiny_cfg("optim.lr_scaling=linear", "optim.base_batch_size=4", "trainer.max_epochs=1")
    with caplog.at_level("INFO", logger="b4transfer.training.devices"):
        summary = train(cfg)
    assert summary["batch"]["lr"] == pytest.approx(2e-3)  # 8 images per step / base 4
    assert "8 images per optimizer step; lr 0.002 (optim.lr=0.001, lr_scaling=linear" in caplog.text
    ckpt = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["optim"]["lr"] == pytest.approx(2e-3)
    assert all(g["lr"] == pytest.approx(2e-3) for g in ckpt["optimizer_states"][0]["param_groups"])


def test_lr_scaling_rules_and_their_errors():
    assert scaled_lr(1e-3, rule="none", global_batch=512, base_batch=None) == 1e-3
    assert scaled_lr(1e-3, rule="linear", global_batch=512, base_batch=256) == pytest.approx(2e-3)
    assert scaled_lr(1e-3, rule="sqrt", global_batch=1024, base_batch=256) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="lr_scaling='cubic' is not a rule; choose one of none, linear"):
        scaled_lr(1e-3, rule="cubic", global_batch=8, base_batch=8)
    with pytest.raises(ValueError, match="optim.base_batch_size must be a positive integer, got 0"):
        scaled_lr(1e-3, rule="linear", global_batch=8, base_batch=0)


def test_strategy_group_builds_lightning_strategies():
    assert build_strategy(compose_cfg().strategy) == "auto"
    ddp = build_strategy(compose_cfg("strategy=ddp").strategy)
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["find_unused_parameters"] is False
    spawn = build_strategy(compose_cfg("strategy=ddp_spawn").strategy)
    assert isinstance(spawn, DDPStrategy) and spawn._start_method == "spawn"


def test_fsdp_wraps_each_efficientnet_block():
    strategy = build_strategy(compose_cfg("strategy=fsdp").strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    model = timm.create_model("efficientnet_b4", pretrained=False)
    wrapped = {type(m).__name__ for m in model.modules() if type(m) in policy._module_classes}
    assert wrapped == {"DepthwiseSeparableConv", "InvertedResidual"}
    assert sum(type(m) in policy._module_classes for m in model.modules()) == 32  # B4's 32 blocks


def test_bad_strategy_and_wrap_class_are_named():
    with pytest.raises(ValueError, match="strategy='deepspeed' is not supported; choose one of auto, ddp"):
        build_strategy({"name": "deepspeed"})
    with pytest.raises(ValueError, match=r"auto_wrap_policy names 'timm.nope.Block', which is not an"):
        build_strategy({"name": "fsdp", "auto_wrap_policy": ["timm.nope.Block"]})


def test_trainer_presets_compose():
    cpu = compose_cfg("trainer=cpu")
    assert cpu.trainer.accelerator == "cpu" and cpu.trainer.max_epochs == 10  # on top of default
    multi = compose_cfg("trainer=multi_gpu")
    assert multi.trainer.accelerator == "gpu" and multi.trainer.devices == -1 and multi.strategy.name == "ddp"
    nodes = compose_cfg("trainer=multi_node", "trainer.num_nodes=4", "strategy=fsdp")
    assert nodes.trainer.num_nodes == 4 and nodes.strategy.name == "fsdp"


def test_strategy_ddp_on_cpu_builds_a_two_process_trainer(tiny_cfg):
    cfg = tiny_cfg("strategy=ddp", "trainer.devices=2")
    trainer = build_trainer(cfg, Path(cfg.run_dir))
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    one = build_trainer(tiny_cfg(), Path(cfg.run_dir))
    assert isinstance(one.strategy, SingleDeviceStrategy)


def test_default_num_workers_is_shared_by_the_local_ranks(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert default_num_workers(1) == 8  # 15, capped at 8
    assert default_num_workers(4) == 3  # 16 CPUs / 4 ranks - 1
    assert default_num_workers("auto") == 8


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)


def test_channels_last_puts_weights_and_activations_in_nhwc():
    net = apply_speed_switches(_Net(), {"channels_last": True})
    assert net.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    net.backbone.blocks[1].register_forward_hook(lambda m, i, o: seen.append(o))
    net.backbone(torch.randn(2, 3, 64, 64))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


def test_channels_last_trains_a_step_and_keeps_checkpoint_keys(tiny_cfg):
    summary = train(tiny_cfg("model.channels_last=true", "trainer.limit_train_batches=1"))
    assert summary["global_step"] == 1
    keys = torch.load(summary["last_checkpoint"], weights_only=False)["state_dict"].keys()
    assert "backbone.conv_stem.weight" in keys


def test_bad_compile_mode_is_named():
    with pytest.raises(ValueError, match="compile_mode='fast' is not a torch.compile mode; choose one of"):
        apply_speed_switches(_Net(), {"compile": True, "compile_mode": "fast"})


@pytest.mark.slow
def test_compile_trains_a_step_on_cpu(tiny_cfg):
    summary = train(
        tiny_cfg("model.compile=true", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    )
    assert summary["global_step"] == 1
    keys = torch.load(summary["last_checkpoint"], weights_only=False)["state_dict"].keys()
    assert not any("_orig_mod" in k for k in keys), "compiling in place keeps parameter names"
