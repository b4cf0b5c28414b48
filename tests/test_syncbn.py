"""SyncBatchNorm that keeps timm's fused activations (and the proof that torch's converter does not)."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn

from b4transfer.training.devices import trainer_kwargs
from b4transfer.training.syncbn import TimmSyncBatchNorm
from b4transfer.training.trainer import build_trainer


@pytest.fixture(scope="module")
def b4_and_input():
    """Random-init B4 in eval mode with non-trivial BN statistics (as after training), and a small input."""
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b4", pretrained=False, num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval(), torch.randn(2, 3, 64, 64)


def _norm_act_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers that carry a fused activation (BatchNormAct2d, or what a converter made of one)."""
    norms = (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return [m for m in norms if hasattr(m, "act")]


def _conversion_report(converter, model: nn.Module, x: torch.Tensor) -> dict:
    """Convert a copy of ``model`` and measure what a user would notice: outputs and activations applied."""
    converted = converter(copy.deepcopy(model)).eval()
    layers = _norm_act_layers(converted)
    calls = []
    hooks = [m.act.register_forward_hook(lambda *_: calls.append(1)) for m in layers]
    with torch.no_grad():
        diff = (converted(x) - model(x)).abs().max().item()
    for h in hooks:
        h.remove()
    return {"model": converted, "max_abs_diff": diff, "layers": len(layers), "act_calls": len(calls)}


def _keeps_b4_intact(report: dict) -> bool:
    return report["max_abs_diff"] < 1e-5 and report["act_calls"] == report["layers"] > 0


def test_timm_sync_bn_keeps_b4_outputs_and_activations(b4_and_input):
    model, x = b4_and_input
    report = _conversion_report(TimmSyncBatchNorm().apply, model, x)
    n_norm_act = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    assert n_norm_act > 90  # every norm of B4 is a fused BatchNormAct2d
    assert report["max_abs_diff"] < 1e-5
    converted = report["model"]
    assert sum(isinstance(m, SyncBatchNormAct) for m in converted.modules()) == n_norm_act
    assert not any(type(m) is BatchNormAct2d for m in converted.modules())
    assert report["act_calls"] == report["layers"] == n_norm_act, "each converted layer applies its act"
    assert _keeps_b4_intact(report)


def test_the_same_check_fails_with_torchs_converter(b4_and_input):
    """Lightning's default (`sync_batchnorm=True`) plugin drops the SiLUs: the check above catches it."""
    model, x = b4_and_input
    report = _conversion_report(TorchSyncBatchNorm().apply, model, x)
    assert report["layers"] > 90 and report["act_calls"] == 0
    assert report["max_abs_diff"] > 1e-2
    assert not _keeps_b4_intact(report)


def test_revert_restores_batchnorm_act_with_identical_outputs(b4_and_input):
    model, x = b4_and_input
    plugin = TimmSyncBatchNorm()
    reverted = plugin.revert(plugin.apply(copy.deepcopy(model))).eval()
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    n_norm_act = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    assert sum(type(m) is BatchNormAct2d for m in reverted.modules()) == n_norm_act
    assert reverted.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert (reverted(x) - model(x)).abs().max() < 1e-5


def test_plain_batchnorm_is_converted_and_reverted_too():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    plugin = TimmSyncBatchNorm()
    synced = plugin.apply(copy.deepcopy(net))
    assert type(synced[1]) is nn.SyncBatchNorm
    back = plugin.revert(synced).eval()
    assert not isinstance(back[1], nn.SyncBatchNorm)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-6)


def test_sync_batchnorm_switch_installs_the_timm_plugin_not_lightnings():
    kwargs = trainer_kwargs({"accelerator": "cpu", "devices": 2, "sync_batchnorm": True}, {"name": "ddp"})
    assert kwargs["sync_batchnorm"] is False
    trainer = L.Trainer(**kwargs, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy._layer_sync, TimmSyncBatchNorm)


def test_sync_batchnorm_on_several_cpu_processes_is_refused(tiny_cfg):
    cfg = tiny_cfg("strategy=ddp", "trainer.devices=2", "trainer.sync_batchnorm=true")
    with pytest.raises(ValueError, match="sync_batchnorm=true with several CPU processes.*only runs on GPUs"):
        build_trainer(cfg, Path(cfg.run_dir))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_with_sync_batchnorm_on_gpus_keeps_activations(tiny_cfg):
    from b4transfer.modes import train

    summary = train(
        tiny_cfg(
            "trainer.accelerator=gpu",
            "trainer.devices=2",
            "strategy=ddp_spawn",
            "trainer.sync_batchnorm=true",
            "trainer.limit_train_batches=2",
        )
    )
    assert summary["global_step"] > 0
