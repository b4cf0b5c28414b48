"""End to end through ``train(cfg)``: run directory contents, export round-trip, resume, bad config."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
import timm
import torch
from hydra.errors import ConfigCompositionException
from tests.conftest import TINY, compose_cfg

from b4transfer.modes import run, train
from b4transfer.tasks import load_module
from b4transfer.training.callbacks import seconds_since_process_start


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_a_complete_run_directory(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.max_epochs=2"))
    run_dir = tmp_path / "run"
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    assert (run_dir / "confusion_matrix_val.png").stat().st_size > 1000
    rows = _rows(run_dir / "metrics.csv")
    val_acc = [float(r["val/acc1"]) for r in rows if r.get("val/acc1")]
    assert len(val_acc) == 2 and all(0.0 <= a <= 1.0 for a in val_acc)
    assert any(r.get("val/acc_red") for r in rows), "per-class accuracy is logged by class name"
    assert any(r.get("val/f1_macro") for r in rows)
    elapsed = [float(r["time/elapsed_s"]) for r in rows if r.get("time/elapsed_s")]  # at each epoch end
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1] <= seconds_since_process_start()
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["epochs"] == 2 and written["global_step"] == summary["global_step"] > 0
    assert written["class_names"] == ["blue", "green", "red"]
    assert written["train_images_per_s"] > 0 and written["wall_time_s"] > 0
    assert "val/acc1" in written["metrics"]
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["label_names"] == ["blue", "green", "red"]


def test_seconds_since_process_start_counts_from_the_start_of_the_process():
    code = (
        "import time; t = time.perf_counter(); "
        "from b4transfer.training.callbacks import seconds_since_process_start as f; "
        "time.sleep(0.3); print(f(), time.perf_counter() - t)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    since_start, since_import_began = map(float, out.split())
    # clock ticks are 10 ms: the process started before its imports and after this test launched it
    assert 0.3 <= since_import_began <= since_start + 0.02 and since_start <= wall + 0.02


def test_export_reloads_in_plain_timm_with_identical_logits(tiny_cfg, tmp_path):
    summary = train(tiny_cfg())
    module = load_module(summary["best_checkpoint"])
    export_dir = tmp_path / "run" / "export"
    model = timm.create_model(
        "test_efficientnet",
        pretrained=True,
        num_classes=3,
        pretrained_cfg_overlay=dict(file=str(export_dir / "model.safetensors"), num_classes=3),
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - module(x)).abs().max() < 1e-5


def test_resume_from_last_checkpoint_continues_the_run(tiny_cfg, tmp_path):
    first = train(tiny_cfg())
    resumed = train(
        tiny_cfg(
            "trainer.max_epochs=2", f"ckpt_path={first['last_checkpoint']}", f"run_dir={tmp_path / 'r2'}"
        )
    )
    assert resumed["epochs"] == 2
    assert resumed["global_step"] == 2 * first["global_step"]


def test_a_run_never_overwrites_an_earlier_run(tiny_cfg, tmp_path):
    train(tiny_cfg())
    before = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(FileExistsError, match="already holds an earlier run"):
        train(tiny_cfg())
    assert (tmp_path / "run" / "summary.json").read_text() == before


def test_num_classes_is_checked_against_the_data(tiny_cfg):
    with pytest.raises(ValueError, match=r"num_classes=5 but the data holds 3 classes \(blue, green, red\)"):
        train(tiny_cfg("num_classes=5"))


def test_missing_checkpoint_is_named(tiny_cfg):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path='/nope/last.ckpt' does not exist"):
        run(tiny_cfg("mode=export", "ckpt_path=/nope/last.ckpt"))


def test_modes_that_need_a_checkpoint_say_so(tiny_cfg):
    with pytest.raises(ValueError, match="mode=predict needs a trained checkpoint: pass ckpt_path="):
        run(tiny_cfg("mode=predict", "predict.input=/tmp"))


def test_unknown_config_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="data.rooot"):
        compose_cfg("data=folder", "data.rooot=/x")


def test_unknown_mode_is_rejected(tiny_cfg):
    with pytest.raises(ValueError, match="mode='fit' is not a mode; choose one of train, validate"):
        run(tiny_cfg("mode=fit"))


def test_validate_and_test_modes_report_metrics(tiny_cfg, tmp_path):
    summary = train(tiny_cfg())
    for mode in ("validate", "test"):
        result = run(
            tiny_cfg(f"mode={mode}", f"ckpt_path={summary['last_checkpoint']}", f"run_dir={tmp_path / mode}")
        )
        assert 0.0 <= result["metrics"][f"{'val' if mode == 'validate' else 'test'}/acc1"] <= 1.0


def test_multi_label_csv_trains(tmp_path, image_folder):
    rows = ["path,label"]
    for i, p in enumerate(sorted(image_folder.rglob("*.png"))):
        labels = p.parent.name + (" bright" if i % 2 else "")
        rows.append(f"{p.relative_to(image_folder)},{labels}")
    (image_folder / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_cfg(
        *TINY,
        "data=csv",
        f"data.csv={image_folder / 'labels.csv'}",
        "data.multi_label=true",
        f"run_dir={tmp_path / 'run'}",
    )
    summary = train(cfg)
    assert summary["class_names"] == ["blue", "bright", "green", "red"]
    assert "val/map" in summary["metrics"]


def test_tensorboard_logger_writes_events_and_metrics_csv(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboardX")
    train(tiny_cfg("logger=tensorboard"))
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents*"))
    assert (tmp_path / "run" / "metrics.csv").is_file()
