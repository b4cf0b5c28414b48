"""Cached-feature linear probe: the same head as the uncached frozen-backbone run, clear errors."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from b4transfer import tasks
from b4transfer.config import plain as _plain
from b4transfer.modes import train
from b4transfer.modes.common import build_splits
from b4transfer.tasks import load_module
from b4transfer.tasks.classification.feature_cache import CachedFeatureDataModule, check_cacheable
from b4transfer.training.callbacks import ThroughputMeter
from b4transfer.training.trainer import build_trainer

# checkpoint.monitor=null: last.ckpt is then written every epoch (with a monitor, Lightning 2.6 only
# rewrites last.ckpt when the monitored metric improves, so it can hold an earlier epoch)
PROBE = (
    "finetune=linear_probe",
    "data.augment=false",
    "model.drop_rate=0.3",
    "trainer.max_epochs=2",
    "optim.lr=0.05",
    "checkpoint.monitor=null",
)


def _uncached_probe(cfg, run_dir):
    """The same steps as train(cfg), with the backbone frozen in eval mode and run on every batch."""
    from b4transfer.tasks.classification.module import build_backbone

    L.seed_everything(cfg.seed, workers=True)
    backbone = build_backbone(_plain(cfg.model))
    splits = build_splits(cfg, tasks.from_config(cfg))
    module = tasks.from_config(cfg).build_module(cfg, splits, backbone)
    datamodule = tasks.from_config(cfg).build_datamodule(cfg, splits, module)
    module.backbone.requires_grad_(False).eval()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=[ThroughputMeter()])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        trainer.fit(module, datamodule=datamodule)
    return module, trainer


def test_cached_probe_trains_the_same_head_as_the_uncached_frozen_backbone(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*PROBE, "data.cache_features=true")
    summary = train(cfg)
    cached = load_module(summary["last_checkpoint"])
    ucfg = tiny_cfg(*PROBE, f"run_dir={tmp_path / 'uncached'}")
    uncached, trainer = _uncached_probe(ucfg, tmp_path / "uncached")

    assert summary["global_step"] == trainer.global_step == 6  # 24 train images / batch 8, 2 epochs
    for key, value in uncached.head.state_dict().items():
        assert torch.allclose(cached.head.state_dict()[key], value, atol=1e-5), key
    task = tasks.from_config(cfg)
    fresh = task.build_module(cfg, build_splits(cfg, task))
    moved = (cached.head.fc.weight - fresh.head.fc.weight).abs().max()
    assert moved > 1e-3, "the head trained"
    # the backbone is untouched: bit-identical to the uncached run's frozen backbone
    for key, value in uncached.backbone.state_dict().items():
        assert torch.equal(cached.backbone.state_dict()[key], value), key
    assert summary["metrics"]["val/acc1"] == pytest.approx(float(trainer.callback_metrics["val/acc1"]))
    assert summary["feature_extraction_s"] > 0


def test_cached_features_match_the_backbone_in_eval_mode(tiny_cfg):
    cfg = tiny_cfg("data.augment=false")
    splits = build_splits(cfg, tasks.from_config(cfg))
    module = tasks.from_config(cfg).build_module(cfg, splits)
    module.backbone.requires_grad_(False)
    images = tasks.from_config(cfg).build_datamodule(cfg, splits, module)
    cache = CachedFeatureDataModule(images, backbone=module.backbone)
    rng_before = torch.get_rng_state()
    feats, targets = cache.cached("val").tensors
    assert torch.equal(torch.get_rng_state(), rng_before), "extraction leaves the global RNG alone"
    assert module.backbone.training, "the backbone's mode is restored"
    x, y = next(iter(images.val_dataloader()))
    with torch.no_grad():
        expected = module.backbone.eval()(x)
    assert feats.shape == (len(splits.val), module.backbone.num_features)
    assert torch.allclose(feats[: len(x)], expected, atol=1e-5) and torch.equal(targets[: len(y)], y)


def test_cache_needs_deterministic_inputs_and_a_frozen_backbone(tiny_cfg):
    with pytest.raises(ValueError, match=r"data.cache_features=true needs deterministic.*data.augment=false"):
        train(tiny_cfg("data.cache_features=true"))
    with pytest.raises(ValueError, match=r"finetune='full' trains it. Fix: use finetune=linear_probe"):
        check_cacheable(augment=False, finetune={"name": "full"})
    check_cacheable(augment=False, finetune={"name": "linear_probe"})
    check_cacheable(augment=False, finetune={"_target_": "b4transfer.training.finetuning.LinearProbe"})
    with pytest.raises(ValueError, match=r"finetune='full' trains it"):
        check_cacheable(augment=False, finetune={"_target_": "b4transfer.training.finetuning.Full"})
    cfg = tiny_cfg("data.augment=false")
    splits = build_splits(cfg, tasks.from_config(cfg))
    module = tasks.from_config(cfg).build_module(cfg, splits)
    images = tasks.from_config(cfg).build_datamodule(cfg, splits, module)
    cache = CachedFeatureDataModule(images, backbone=module.backbone)
    with pytest.raises(ValueError, match=r"need a frozen backbone, but \d+ backbone parameters require"):
        cache.cached("train")
