"""Unfreezing under DDP (2 CPU processes, gloo), through the CLI as a user runs it.

The ranks see different halves of the data, so a backbone whose gradients are not all-reduced drifts
apart across ranks. The second test reproduces that trap with Lightning's own ``BaseFinetuning``, which
shows the first test would notice.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import TINY
from tests.test_cli import _ok, cli

DDP = ("strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=4")


def _params(state: dict) -> dict:
    """Weights only: BN running statistics are per-rank between DDP's buffer broadcasts."""
    return {
        k: v
        for k, v in state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def _run(tmp_path, image_folder, *overrides):
    out = tmp_path / "states"
    _ok(
        cli(
            *TINY,
            *DDP,
            "data=folder",
            f"data.root={image_folder}",
            "trainer.max_epochs=2",
            "+callbacks.states._target_=tests.probes.SaveStates",
            f"+callbacks.states.out_dir={out}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
            cwd=tmp_path,
        )
    )
    return lambda rank, when: torch.load(out / f"rank{rank}_{when}.pt", weights_only=True)


@pytest.mark.slow
def test_freeze_unfreeze_under_ddp_keeps_the_unfrozen_backbone_identical_on_both_ranks(
    tmp_path, image_folder
):
    load = _run(tmp_path, image_folder, "finetune=freeze_unfreeze", "finetune.unfreeze_at_epoch=1")
    start, frozen, unfrozen = (load(0, w) for w in ("start", "epoch0", "epoch1"))
    assert all(torch.equal(start["backbone"][k], v) for k, v in frozen["backbone"].items())
    moved = [k for k, v in _params(unfrozen["backbone"]).items() if not torch.equal(v, frozen["backbone"][k])]
    assert len(moved) > 0.8 * len(_params(unfrozen["backbone"]))  # it trained after unfreezing
    other = load(1, "epoch1")
    for part in ("backbone", "head"):
        for k, v in _params(unfrozen[part]).items():
            assert torch.equal(v, other[part][k]), f"{part}.{k} differs between rank 0 and rank 1"
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "export").is_dir()


@pytest.mark.slow
def test_toggling_requires_grad_after_ddp_wrapped_the_model_lets_ranks_drift(tmp_path, image_folder):
    load = _run(tmp_path, image_folder, "~finetune", "+callbacks.naive._target_=tests.probes.NaiveUnfreeze")
    rank0, rank1 = _params(load(0, "epoch1")["backbone"]), _params(load(1, "epoch1")["backbone"])
    assert not all(torch.equal(v, rank1[k]) for k, v in rank0.items())
