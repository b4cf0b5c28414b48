"""Resuming mid-schedule from ``last.ckpt`` continues with the same frozen state, param groups and LRs."""

from __future__ import annotations

import csv

import pytest
import torch
from tests.probes import Killed

from b4transfer.modes import train


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _lrs_by_step(run_dir) -> dict[int, dict[str, float]]:
    lrs = {}
    for row in _rows(run_dir / "metrics.csv"):
        values = {k: float(v) for k, v in row.items() if k.startswith("lr-") and v}
        if values:
            lrs[int(row["step"])] = values
    return lrs


def _groups(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    schedule = next(v for k, v in ckpt["callbacks"].items() if "FreezeUnfreeze" in k or "Gradual" in k)
    return groups, schedule, ckpt["lr_schedulers"][0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        ("finetune=freeze_unfreeze", "finetune.unfreeze_at_epoch=1", "finetune.warmup_epochs=2"),
        ("finetune=gradual", "finetune.unfreeze_at_epochs=[1,2,3]", "finetune.warmup_epochs=2"),
    ],
    ids=["freeze_unfreeze", "gradual"],
)
def test_a_run_killed_after_unfreezing_resumes_to_the_same_groups_and_lrs(tiny_cfg, tmp_path, schedule):
    common = (*schedule, "scheduler=cosine", "trainer.max_epochs=4")
    train(tiny_cfg(*common, f"run_dir={tmp_path / 'straight'}"))
    with pytest.raises(Killed):  # dies as epoch 2 starts: last.ckpt holds epoch 1, half-way through warm-up
        train(
            tiny_cfg(
                *common,
                f"run_dir={tmp_path / 'killed'}",
                "+callbacks.kill._target_=tests.probes.KillAtEpoch",
                "+callbacks.kill.epoch=2",
            )
        )
    killed_groups, killed_state, _ = _groups(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert killed_state["trainable"][-1] is True  # the checkpoint is after the (first) unfreeze
    assert any(0 < g["lr_scale"] < 1 for g in killed_groups)  # mid warm-up

    resumed = train(
        tiny_cfg(
            *common,
            f"run_dir={tmp_path / 'resumed'}",
            f"ckpt_path={tmp_path / 'killed/checkpoints/last.ckpt'}",
        )
    )
    assert resumed["epochs"] == 4
    straight_groups, straight_state, straight_sched = _groups(
        tmp_path / "straight" / "checkpoints" / "last.ckpt"
    )
    resumed_groups, resumed_state, resumed_sched = _groups(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert resumed_groups == straight_groups  # names, params, lr, lr_scale, weight decay, stages, ...
    assert resumed_state == straight_state
    assert resumed_sched == straight_sched
    straight_lrs, resumed_lrs = _lrs_by_step(tmp_path / "straight"), _lrs_by_step(tmp_path / "resumed")
    assert min(resumed_lrs) > 0 and resumed_lrs  # only the steps after the resume were logged again
    for step, lrs in resumed_lrs.items():
        assert lrs == pytest.approx(straight_lrs[step]), f"step {step}"
