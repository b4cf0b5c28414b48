"""EMA of weights (validation uses them, checkpoints and export carry them) and Mixup / CutMix batches."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from tests.test_finetuning import _fit

from b4transfer.tasks.classification.data.mixup import BatchMixup, build_mixup
from b4transfer.training.ema import EMA


class WeightsSeen(L.Callback):
    """Head weights after every optimizer step, and the ones each validation runs with."""

    def __init__(self):
        self.after_step, self.validated = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append(pl_module.head.fc.weight.detach().clone())

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append(pl_module.head.fc.weight.detach().clone())


def test_validation_checkpoint_and_export_use_the_ema_weights(tiny_cfg, tmp_path):
    seen = WeightsSeen()
    module, trainer = _fit(tiny_cfg("finetune=full", "ema.enabled=true", "ema.decay=0.9"), seen)
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
    expected = seen.after_step[0]  # the first update copies; then lerp with timm's warm-up decay
    for n, weights in enumerate(seen.after_step[1:], start=1):
        decay = min(0.9, (1 + n) / (10 + n))
        expected = expected + (1 - decay) * (weights - expected)
    assert len(seen.after_step) == 3 and not torch.allclose(expected, seen.after_step[-1], atol=1e-4)
    assert torch.allclose(seen.validated[0], expected, atol=1e-6)  # validation ran with the EMA weights
    assert torch.allclose(module.head.fc.weight, expected, atol=1e-6)  # and training ends with them
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert torch.allclose(ckpt["state_dict"]["head.fc.weight"], expected, atol=1e-6)
    assert torch.equal(ckpt["current_model_state"]["head.fc.weight"], seen.after_step[-1])  # raw, for resume
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.9


def test_ema_keeps_a_frozen_backbone_bit_identical(tiny_cfg):
    module, trainer = _fit(tiny_cfg("finetune=linear_probe", "ema.enabled=true", "ema.decay=0.5",
                                    "checkpoint.best_weights_only=false"))  # the raw weights too
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
    n_backbone = len(list(module.backbone.parameters())) + len(list(module.backbone.buffers()))
    assert ema._exact and ema.skipped_tensors >= n_backbone  # the frozen backbone is skipped, not lerped
    ckpt = torch.load(module.trainer.checkpoint_callback.best_model_path, weights_only=False)
    raw, averaged = ckpt["current_model_state"], ckpt["state_dict"]  # raw == start: linear probe
    assert all(torch.equal(raw[k], averaged[k]) for k in raw if k.startswith("backbone."))
    assert not torch.equal(raw["head.fc.weight"], averaged["head.fc.weight"])


def test_exported_weights_are_the_ema_weights(tiny_cfg, tmp_path):
    from b4transfer.modes import train

    summary = train(tiny_cfg("finetune=full", "ema.enabled=true", "ema.decay=0.9"))  # one epoch: best = last
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    last = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=False)
    assert "optimizer_states" not in best and "current_model_state" not in best  # best_weights_only=true
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in best["state_dict"].items())  # the EMA's
    exported = load_file(tmp_path / "run" / "export" / "model.safetensors")
    assert torch.equal(exported["classifier.weight"], best["state_dict"]["head.fc.weight"])
    assert not torch.equal(exported["classifier.weight"], last["current_model_state"]["head.fc.weight"])


def test_bad_ema_settings_are_named():
    with pytest.raises(ValueError, match=r"ema.decay must be in \[0, 1\), e.g. 0.999, got 1.5"):
        EMA(decay=1.5)
    with pytest.raises(ValueError, match=r"ema.update_every_n_steps must be an integer >= 1, got 0"):
        EMA(update_every_n_steps=0)


# ------------------------------------------------------------------------------------------- mixup
@pytest.mark.parametrize("n", [6, 7, 1])
def test_mixup_gives_soft_targets_even_for_odd_batches(n):
    torch.manual_seed(0)
    mix = BatchMixup(num_classes=4, mixup_alpha=0.4, cutmix_alpha=1.0)
    x, y = torch.rand(n, 3, 16, 16), torch.arange(n) % 4
    original = x.clone()
    mixed_x, soft = mix(x.clone(), y)
    assert mixed_x.shape == x.shape and soft.shape == (n, 4)
    assert torch.allclose(soft.sum(-1), torch.ones(n))
    if n % 2:  # the odd one out keeps its image and a one-hot target
        assert torch.equal(mixed_x[-1], original[-1]) and soft[-1, y[-1]] == 1.0
    if n > 1:
        assert not torch.equal(mixed_x[: n - n % 2], original[: n - n % 2])
        assert (soft[: n - n % 2].max(-1).values < 1).any()


def test_mixup_off_and_bad_settings():
    assert build_mixup({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, num_classes=3, multi_label=False) is None
    with pytest.raises(ValueError, match=r"data.mixup has unknown key\(s\) \['alpha'\]; valid keys"):
        build_mixup({"mixup_alpha": 0.2, "alpha": 1}, num_classes=3, multi_label=False)
    with pytest.raises(ValueError, match=r"data.mixup.mode='pixel' is not a mixing mode"):
        BatchMixup(num_classes=3, mixup_alpha=0.2, mode="pixel")
    with pytest.raises(ValueError, match=r"data.mixup.prob must be a probability in \[0, 1\], got 2"):
        BatchMixup(num_classes=3, mixup_alpha=0.2, prob=2)


class TargetShapes(L.Callback):
    def __init__(self):
        self.train, self.val = set(), set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.add(tuple(batch[1].shape[1:]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.add(tuple(batch[1].shape[1:]))


def test_training_with_mixup_and_cutmix_uses_soft_targets_only_for_training(tiny_cfg, tmp_path):
    shapes = TargetShapes()
    cfg = tiny_cfg("data.mixup.mixup_alpha=0.4", "data.mixup.cutmix_alpha=1.0", "data.batch_size=7")
    _, trainer = _fit(cfg, shapes)  # 18 images in batches of 7: the last batch (4) is even, 7 is odd
    assert shapes.train == {(3,)} and shapes.val == {()}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/acc1" not in trainer.callback_metrics  # accuracy is undefined against soft targets


def test_ema_skips_only_tensors_that_cannot_change_and_matches_the_full_update():
    """Frozen (grad None, eval-mode BN) tensors still equal to their average are skipped, bit-exactly,
    with an update every other step, a layer that trains only between updates, and validation swaps."""
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    lin, bn = torch.nn.Linear, torch.nn.BatchNorm1d
    model = torch.nn.Sequential(lin(4, 4), bn(4), lin(4, 4), bn(4), lin(4, 4))
    fast, full = EMA(decay=0.5), EMA(decay=0.5)
    fast._average_model = AveragedModel(model, use_buffers=True, multi_avg_fn=fast._update)
    full._average_model = AveragedModel(model, use_buffers=True, multi_avg_fn=full._update)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(8):
        # 0-1 frozen throughout; 2-3 train for 3 steps, then freeze (out of sync: still averaged);
        # 4 trains only in step 3, between two updates (steps 2 and 4): it must not be skipped at 4
        trains = [False, False, step < 3, step < 3, step == 3]
        for layer, on in zip(model, trains):
            layer.train(on)
        opt.zero_grad(set_to_none=True)
        model(torch.randn(8, 4)).square().mean().backward()
        for layer, on in zip(model, trains):
            for p in layer.parameters() if not on else ():
                p.grad = None
        opt.step()
        update = step % 2 == 0
        if step == 6:
            fast._in_sync = None  # what a restore from a checkpoint does: the next update re-derives it
        fast.after_batch(model, stepped=True, update=update)
        if update:
            full._average_model.update_parameters(model)
        if step == 4:  # a validation: both swap in their averages, then back
            fast._swap_models(model)
            swapped = [t.clone() for t in model.state_dict().values()]
            fast._swap_models(model)
            full._swap_models(model)
            assert all(torch.equal(a, b) for a, b in zip(swapped, model.state_dict().values()))
            full._swap_models(model)
    for (a, _), (b, _) in zip(fast._tensor_pairs(model), full._tensor_pairs(model)):
        assert torch.equal(a, b)
    assert fast._average_model.n_averaged == full._average_model.n_averaged == 4
    # updates 2 and 4 skip the frozen Linear (2) + BatchNorm (2 params, 3 buffers), the one at step 2
    # also layer 4 (2), which has not trained yet; step 6 (after the "restore") is a full update
    assert fast.skipped_tensors == 2 * 7 + 2 and fast._in_sync[:2] == [True, True]
    assert not torch.equal(fast._average_model.module[4].weight, model[4].weight)  # averaged at step 4


def test_ema_falls_back_to_the_plain_update_when_the_models_do_not_line_up():
    from torch.optim.swa_utils import AveragedModel

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(decay=0.5)
    ema._average_model = AveragedModel(model, use_buffers=True, multi_avg_fn=ema._update)
    wrapped = torch.nn.Sequential(torch.nn.Sequential(*model))  # one more module level, same tensors
    ema.after_batch(wrapped, stepped=True, update=True)
    assert not ema._exact and ema._in_sync is None  # not lined up: no skipping, plain EMA from here
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.after_batch(wrapped, stepped=True, update=True)
    # lerp towards the moved weight with weight 1 - decay_at(1): the average ends decay_at(1) short of it
    expected = model[0].weight - ema.decay_at(1) * 1.0
    assert torch.allclose(ema._average_model.module[0].weight, expected) and ema.skipped_tensors == 0
