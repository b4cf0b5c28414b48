"""Early stopping: a run whose metric plateaus stops, says so in summary.json, and exports the best epoch."""

from __future__ import annotations

import json

import lightning as L
import pytest
import timm
import torch
from tests.conftest import compose_cfg

from b4transfer.errors import UserError
from b4transfer.modes import train
from b4transfer.tasks import load_module
from b4transfer.training.trainer import build_trainer

SCORES = [0.2, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]  # best at the 2nd epoch ("epoch 2/8"), then flat


class ScriptedScore(L.Callback):
    """Logs ``probe/score`` = ``SCORES[epoch]`` at each validation: a metric that plateaus on cue."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            pl_module.log("probe/score", SCORES[trainer.current_epoch])


def _exported_logits(run_dir, x):
    model = timm.create_model(
        "test_efficientnet", pretrained=True, num_classes=3,
        pretrained_cfg_overlay=dict(file=str(run_dir / "export" / "model.safetensors"), num_classes=3),
    ).eval()
    with torch.no_grad():
        return model(x)


def test_a_plateau_stops_the_run_and_the_export_holds_the_best_epoch(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_epochs=8", "early_stopping.patience=2", "checkpoint.monitor=probe/score",
                   "optim.lr=3e-3")
    summary = train(cfg, callbacks=[ScriptedScore()])
    run_dir = tmp_path / "run"
    assert summary["epochs"] == 4, "epochs 2 and 3 did not improve on epoch 1: patience 2 ends the run"
    written = json.loads((run_dir / "summary.json").read_text())["early_stopping"]
    assert written["stopped_epoch"] == 4 and written["best_score"] == pytest.approx(0.9)
    assert written["patience"] == 2 and written["monitor"] == "probe/score"
    assert "probe/score" in written["reason"]
    assert summary["best_checkpoint"].endswith("best-epoch002.ckpt")  # the 2nd epoch (0.9), as printed
    x = torch.randn(2, 3, 64, 64)
    exported = _exported_logits(run_dir, x)
    with torch.no_grad():
        best, last = load_module(summary["best_checkpoint"])(x), load_module(summary["last_checkpoint"])(x)
    assert (exported - best).abs().max() < 1e-5
    assert (last - best).abs().max() > 1e-4, "the last epoch differs: the export is the best, not the last"


def test_early_stopping_is_off_by_default_and_watches_the_tasks_metric(tmp_path):
    trainer = build_trainer(compose_cfg(f"run_dir={tmp_path}"), tmp_path)
    assert trainer.early_stopping_callback is None
    cfg = compose_cfg(f"run_dir={tmp_path}", "early_stopping.patience=3", "early_stopping.min_delta=0.01")
    es = build_trainer(cfg, tmp_path, monitor="val/acc1").early_stopping_callback
    assert (es.monitor, es.mode, es.patience, abs(es.min_delta)) == ("val/acc1", "max", 3, 0.01)
    cfg = compose_cfg(f"run_dir={tmp_path}", "task=detection", "early_stopping.patience=3")
    assert build_trainer(cfg, tmp_path).early_stopping_callback.monitor == "val/map"


def test_a_run_without_early_stopping_says_so(tiny_cfg):
    assert train(tiny_cfg())["early_stopping"] is None


def test_a_bad_patience_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"early_stopping.patience=0 must be a whole number >= 1, or null"):
        build_trainer(compose_cfg(f"run_dir={tmp_path}", "early_stopping.patience=0"), tmp_path)


def test_a_run_that_learns_nothing_stops_on_val_acc1(tiny_cfg):
    """A real plateau: with a vanishing LR val/acc1 never moves, so patience 1 stops after epoch 1."""
    summary = train(tiny_cfg("trainer.max_epochs=5", "early_stopping.patience=1", "optim.lr=1e-12",
                             "ema.enabled=false"))
    assert summary["epochs"] == 2 and summary["early_stopping"]["stopped_epoch"] == 2
    assert summary["early_stopping"]["monitor"] == "val/acc1"
    assert summary["best_checkpoint"].endswith("best-epoch001.ckpt")
