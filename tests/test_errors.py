"""Error analysis after training (issue 11): the highest-loss validation images drawn, per-class
precision / recall; for a detector the AP per class and the worst images drawn."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from tests.conftest import TINY, compose_cfg

from b4transfer.modes import run
from b4transfer.tasks.classification.errors import per_class_table


def test_per_class_precision_and_recall():
    pred = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]]).bool()
    true = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 1]]).bool()
    table = per_class_table(pred, true, ["a", "b"])
    assert table == {
        "a": {"precision": 0.5, "recall": 1.0, "support": 1},
        "b": {"precision": 1.0, "recall": 0.6667, "support": 3},
    }


def test_a_classifier_s_errors_are_drawn_and_tabled(tmp_path, image_folder):
    summary = run(
        compose_cfg(
            *TINY,
            "data=folder",
            f"data.root={image_folder}",
            "data.image_size=32",
            f"run_dir={tmp_path / 'run'}",
        )
    )
    report = summary["error_analysis"]
    assert Path(report["gallery"]).is_file() and set(report["per_class"]) == {"blue", "green", "red"}
    losses = [w["loss"] for w in report["highest_loss"]]
    assert losses == sorted(losses, reverse=True) and all(
        w["true"] in ("blue", "green", "red") for w in report["highest_loss"]
    )
    with open(tmp_path / "run" / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["support"]) for r in rows) == summary["val_images"]


def test_a_detector_s_errors_are_drawn_with_its_ap_per_class(tmp_path):
    summary = run(
        compose_cfg(
            *TINY,
            "task=detection",
            "data.source.image_size=64",
            "data.source.train_images=8",
            "data.source.val_images=4",
            "data.image_size=64",
            "head.fpn_channels=32",
            "trainer.limit_train_batches=2",
            f"data.source.root={tmp_path / 'demo'}",
            f"run_dir={tmp_path / 'run'}",
        )
    )
    report = summary["error_analysis"]
    assert set(report["ap_per_class"]) <= set(summary["class_names"])
    assert Path(report["chart"]).is_file() and Path(report["gallery"]).is_file()
